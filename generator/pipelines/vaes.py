"""A1111's VAE choice: a file of the VAE folder, `Automatic` or `None`.

`Automatic` is the VAE named like the checkpoint (`dreamshaper.vae.safetensors` beside
`dreamshaper.safetensors`, or `dreamshaper.safetensors` in the VAE folder), else the
checkpoint's own; `None` is always the checkpoint's own. A VAE file is converted from its LDM
layout by diffusers' `AutoencoderKL.from_single_file`, shaped by the model's own VAE config
(the shipped family config of a single file, the folder's `vae/config.json`), offline; a
`.pt`/`.ckpt` VAE is read through the restricted unpickler.
"""

from pathlib import Path

from . import checkpoints, single_file
from .checkpoints import ModelFile, Unusable
from .sources import local_folder

AUTOMATIC = "Automatic"
NONE = "None"
VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
"""A1111's names for a checkpoint's own VAE file beside it."""


def choices() -> list[tuple[str, str]]:
    """The page's and the form's VAE choices: Automatic, None, then the folder's usable files."""
    files = [(f.name, f.name) for f in checkpoints.scan("vae") if f.usable]
    return [(AUTOMATIC, AUTOMATIC), (NONE, NONE), *files]


def checkpoint_of(model: str) -> ModelFile | None:
    return checkpoints.lookup(model) if model.endswith((".safetensors", ".ckpt")) else None


def beside(checkpoint: ModelFile) -> list[ModelFile]:
    """The checkpoint's own VAE files in its folder (`<stem>.vae.safetensors`)."""
    stem = checkpoint.path.name.rsplit(".", 1)[0]
    found = []
    for suffix in VAE_SUFFIXES:
        path = checkpoint.path.with_name(stem + suffix)
        if path.is_file():
            found.append(checkpoints.describe("vae", path, path.name))
    return found


def resolve(choice: str, model: str) -> ModelFile | None:
    """The VAE file a job uses, or None for the model's own (Unusable: no such file, or one
    that cannot be used)."""
    if choice in ("", NONE):
        return None
    if choice == AUTOMATIC:
        checkpoint = checkpoint_of(model)
        if checkpoint is None:
            return None
        stem = checkpoint.path.name.rsplit(".", 1)[0]
        named = [
            f
            for f in checkpoints.scan("vae")
            if Path(f.name).name.rsplit(".", 1)[0].removesuffix(".vae") == stem
        ]
        return next((f for f in beside(checkpoint) + named if f.usable), None)
    file = checkpoints.lookup(choice, "vae")
    if file is None:
        raise Unusable(f"No VAE named {choice[:200]} in the VAE folder")
    if file.problem:
        raise Unusable(f"The VAE {file.name} cannot be used: {file.problem}")
    return file


def config_folder(model: str) -> Path:
    """The diffusers folder whose `vae/config.json` shapes a VAE file for this model."""
    checkpoint = checkpoint_of(model)
    if checkpoint is not None:
        if checkpoint.family is None:
            raise Unusable(f"The checkpoint {checkpoint.name} has no known family")
        return single_file.sidecar_config(checkpoint.path) or single_file.config_folder(
            checkpoint.family
        )
    folder = local_folder(model)
    if folder is None or not (folder / "vae" / "config.json").is_file():
        raise Unusable(f"The model {model} has no VAE config here to load a VAE file with")
    return folder


def load(file: ModelFile, model: str, torch_dtype):
    """The VAE file as diffusers' AutoencoderKL, on the CPU (a safetensors file memory-mapped,
    a pickle through the restricted unpickler)."""
    from diffusers import AutoencoderKL

    if file.path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file.path))
    else:
        state = single_file.restricted_load(file.path)
    try:
        return AutoencoderKL.from_single_file(
            state,
            config=str(config_folder(model)),
            subfolder="vae",
            local_files_only=True,
            torch_dtype=torch_dtype,
        )
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise Unusable(f"The VAE {file.name} does not fit the model ({first})") from None


def infotext_fields(file: ModelFile | None) -> tuple[str, str] | None:
    """A1111's `VAE hash` and `VAE` of the VAE file a job used (`backend.vae_used`):
    (sha256[:10], its file name); None where it used the model's own."""
    from .model_hashes import sha256_now

    if file is None:
        return None
    return sha256_now(file.path, file.size, file.mtime_ns)[:10], file.path.name
