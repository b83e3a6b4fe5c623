"""Where a model named in SD_MODEL comes from: the demo, a local folder, or a hub id."""

import contextlib
import functools
import hashlib
import socket
from pathlib import Path
from urllib.parse import urlparse

from . import checkpoints, demo

DEMO_MODEL = "demo"


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` understands."""
    if name == DEMO_MODEL:
        return str(demo.WEIGHTS)
    checkpoint = checkpoints.lookup(name) if name.endswith((".safetensors", ".ckpt", "]")) else None
    if checkpoint is not None:
        if checkpoint.problem:
            raise CheckpointUnusable(f"The checkpoint {checkpoint.name} {checkpoint.problem}.")
        return str(checkpoint.path)
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if name.startswith(("/", "./", "../", "~")):
        # A folder that is not there: say so, rather than let the hub lookup fail
        # with "couldn't connect to huggingface.co".
        raise ModelFolderMissing(f"The model folder {name} does not exist on this worker.")
    # Anything else is a hub id such as "stabilityai/sd-turbo"; from_pretrained
    # downloads it once into the Hugging Face cache (HF_HOME).
    return name


class SetupError(Exception):
    """What this worker's setup lacks, said with what to do about it: a job's error shows
    the message alone, without the type's name."""


class ModelDownloadFailed(SetupError, OSError):
    """A hub model that is not on this machine and did not download."""


class ModelFolderMissing(SetupError, FileNotFoundError):
    """SD_MODEL names a folder that is not on this worker."""


class CheckpointUnusable(SetupError, ValueError):
    """A checkpoint file that cannot be loaded (broken, truncated, refused), with why."""


class DeviceUnusable(SetupError, ValueError):
    """SD_DEVICE names a device that this worker's libraries cannot use."""


@contextlib.contextmanager
def downloads(name: str, source: str):
    """Around `from_pretrained(source)`: a hub model that is not here and does not download
    fails with what to do, not with the HTTP library's last words (offline,
    huggingface_hub's retry ends in "the client has been closed")."""
    if Path(source).is_dir() or hub_file(source, "model_index.json") is not None:
        yield  # here already: its errors are its own
        return
    try:
        yield
    except Exception as exc:
        raise ModelDownloadFailed(
            f"The model {name} is not on this worker and could not be downloaded from the "
            f"Hugging Face Hub ({why_not_downloaded(exc)}). Run the worker once with network "
            "access (the download stays in HF_HOME), or set SD_MODEL to a local folder."
        ) from exc


def why_not_downloaded(exc: Exception) -> str:
    """The likeliest reason first: offline on purpose, no route to the hub, or the error's
    own root (a wrong or private hub id: "Repository Not Found")."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
    except OSError as unreachable:
        return f"{host} cannot be reached: {unreachable}"
    cause = exc
    while cause.__cause__ or cause.__context__:
        cause = cause.__cause__ or cause.__context__
    return f"{type(cause).__name__}: {cause}"


def local_folder(name: str) -> Path | None:
    """The model's folder on this machine (a local one, or a hub model's cached snapshot);
    None for a hub model not downloaded here."""
    try:
        source = resolve_model(name)
    except (FileNotFoundError, ValueError):
        return None
    if Path(source).is_dir():
        return Path(source)
    if Path(source).is_file():  # a single-file checkpoint: no folder
        return None
    index = hub_file(source, "model_index.json")
    return index.parent if index is not None else None


def native_size(name: str) -> int | None:
    """The image side the model was trained at, from its own configs: the denoiser's sample
    size times the VAE's downscale (512 for SD 1.5, 1024 for SDXL and SD3)."""
    import json

    checkpoint = checkpoints.lookup(name) if name.endswith((".safetensors", ".ckpt")) else None
    if checkpoint is not None:
        return checkpoints.NATIVE_SIZES.get(checkpoint.family or "")
    folder = local_folder(name)
    if folder is None:
        return None
    for part in ("unet", "transformer"):
        try:
            sample = json.loads((folder / part / "config.json").read_text())["sample_size"]
            blocks = json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(sample, int):
            return sample * 2 ** (len(blocks) - 1)
    return None


def text_encoder_depth(name: str) -> int | None:
    """How many layers the model's (first) text encoder has, from its config (2 for the demo,
    12 for SD 1.x's CLIP): the most layers a clip skip can reach back. None: unknown here."""
    import json

    folder = local_folder(name)
    if folder is None:
        return None
    try:
        depth = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    layers = depth.get("num_hidden_layers") if isinstance(depth, dict) else None
    return layers if isinstance(layers, int) else None


DENOISER_WEIGHTS = [
    f"{part}/diffusion_pytorch_model{variant}.{ext}"
    for part in ("unet", "transformer")
    for ext in ("safetensors", "bin")
    for variant in ("", ".fp16")
]


def model_hash(name: str) -> str | None:
    """A1111's "Model hash": the short sha256 (10 hex digits) of the checkpoint; for a
    diffusers model, of its UNet's (or transformer's) weights file. None where the file is
    not here (a hub model not downloaded yet)."""
    try:
        source = resolve_model(name)
    except (FileNotFoundError, ValueError):
        return None
    if Path(source).is_file():  # a single-file checkpoint: the file's own hash
        from .model_hashes import sha256_now

        stat = Path(source).stat()
        return sha256_now(source, stat.st_size, stat.st_mtime_ns)[:10]
    for relative in DENOISER_WEIGHTS:
        path = Path(source) / relative
        if not path.is_file() and not Path(source).is_dir():
            path = hub_file(source, relative)
        if path is not None and path.is_file():
            return file_sha256(path)[:10]
    return None


def estimated_bytes(name: str) -> int:
    """What loading the model will take in memory, about, before it loads: its weight files'
    size (a single file's, or a folder's `.safetensors` and `.bin`); 0 where it is not here."""
    try:
        source = Path(resolve_model(name))
    except (FileNotFoundError, ValueError):
        return 0
    if source.is_file():
        return source.stat().st_size
    if not source.is_dir():
        folder = local_folder(name)
        if folder is None:
            return 0
        source = folder
    return sum(
        path.stat().st_size
        for pattern in ("*.safetensors", "*.bin")
        for path in source.rglob(pattern)
        if ".fp16." not in path.name
    )


def hub_file(repo_id: str, relative: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, relative)
    except ValueError:  # not a hub id at all (a typo in SD_MODELS): sd_models_problems says so
        return None
    return Path(found) if isinstance(found, str) else None


def sd_models_problems() -> list[str]:
    """One line for each SD_MODELS entry that can be no model: neither the demo, a folder,
    a checkpoint in the models folder, nor a well-formed hub id."""
    from django.conf import settings
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problems = []
    for name in settings.SD_MODELS:
        try:
            source = resolve_model(name)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"SD_MODELS: {exc}")
            continue
        if source == name and not Path(name).exists():
            try:
                validate_repo_id(name)
            except HFValidationError:
                problems.append(
                    f"SD_MODELS: {name!r} is neither a folder, a checkpoint nor a Hugging Face "
                    "hub id (owner/name, letters, digits, '-', '_' and '.')."
                )
    return problems


def file_sha256(path: Path, *, skip_header: bool = False) -> str:
    """The file's sha256 (remembered while its size and time stay). `skip_header`: of a
    safetensors file's tensors only, without its JSON header (A1111's LoRA hash)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns, skip_header)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime: int, skip_header: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        if skip_header:
            header = int.from_bytes(file.read(8), "little")
            file.seek(8 + header)
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
