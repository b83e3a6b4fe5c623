"""The models people already have: A1111's folders of single-file checkpoints, VAEs,
embeddings, LoRA, upscalers and ControlNets.

`scan(kind)` lists a kind's folder as A1111 does (subfolders scanned, a name keeps its
subfolder: `sd15/dreamshaper.safetensors`), reading only each file's header: a safetensors
file's JSON header (bounded, checked against the file's size, so a truncated download is
found), a `.ckpt`'s zip directory. A file that cannot be used is listed with its reason,
never dropped and never an exception. The family of a checkpoint (SD 1.x, SD 2.x, SDXL and
their inpainting or refiner variants) comes from its tensors' names and shapes, as diffusers'
and A1111's loaders tell them apart. Headers are remembered by path, size and mtime.
"""

import functools
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

KINDS = {
    "checkpoint": ("SD_CHECKPOINT_DIR", (".safetensors", ".ckpt")),
    "vae": ("SD_VAE_DIR", (".safetensors", ".ckpt", ".pt")),
    "embedding": ("SD_EMBEDDINGS_DIR", (".safetensors", ".pt", ".bin")),
    "lora": ("SD_LORA_DIR", (".safetensors",)),
    "esrgan": ("SD_ESRGAN_DIR", (".safetensors", ".pth", ".pt")),
    "realesrgan": ("SD_REALESRGAN_DIR", (".safetensors", ".pth", ".pt")),
    "swinir": ("SD_SWINIR_DIR", (".safetensors", ".pth", ".pt")),
    "dat": ("SD_DAT_DIR", (".safetensors", ".pth", ".pt")),
    "upscaler": ("SD_UPSCALER_DIR", (".safetensors", ".pth", ".pt")),
    "controlnet": ("SD_CONTROLNET_DIR", (".safetensors", ".pth", ".ckpt")),
}

MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on a header's size: past it the file is not one."""
MAX_FILES = 10_000
"""The most files one folder's scan lists (a mistaken SD_WEBUI_DIR=/ must not walk a disk)."""

FAMILIES = {
    "sd1": "SD 1.x",
    "sd1-inpainting": "SD 1.x inpainting",
    "sd2": "SD 2.x",
    "sd2-v": "SD 2.x (v-prediction)",
    "sd2-inpainting": "SD 2.x inpainting",
    "sdxl": "SDXL",
    "sdxl-inpainting": "SDXL inpainting",
    "sdxl-refiner": "SDXL refiner",
}

NATIVE_SIZES = {"sd1": 512, "sd1-inpainting": 512, "sd2": 512, "sd2-v": 768, "sd2-inpainting": 512}
NATIVE_SIZES |= {"sdxl": 1024, "sdxl-inpainting": 1024, "sdxl-refiner": 1024}
"""The image side each family was trained at."""

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CROSS_ATTENTION = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
SD1_TEXT = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.embeddings.token_embedding.weight",
)
SD2_TEXT = "cond_stage_model.model.token_embedding.weight"
SDXL_TEXT_2 = "conditioner.embedders.1.model.token_embedding.weight"
REFINER_TEXT = "conditioner.embedders.0.model.token_embedding.weight"


class Unusable(ValueError):
    """A model file that cannot be used, with the reason."""


@dataclass(frozen=True)
class ModelFile:
    kind: str
    name: str
    """The path under its kind's folder, with `/` between subfolders (A1111's `name`)."""
    path: Path
    size: int
    mtime_ns: int
    family: str | None = None
    problem: str | None = None
    """Why the file cannot be used; None where it can."""

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the name without its extension, subfolders joined by `_`."""
        return os.path.splitext(self.name.replace("/", "_"))[0]

    @property
    def stem(self) -> str:
        """The file's own name without extension (an embedding's or LoRA's prompt name)."""
        return Path(self.name).stem


def folder(kind: str) -> Path | None:
    value = getattr(settings, KINDS[kind][0], None)
    return Path(value) if value else None


def scan(kind: str) -> list[ModelFile]:
    """The kind's files, sorted by name, each with its family or its problem."""
    root = folder(kind)
    if root is None or not root.is_dir():
        return []
    extensions = KINDS[kind][1]
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith(".") or not filename.lower().endswith(extensions):
                continue
            if kind == "checkpoint" and ".vae." in filename.lower():
                continue  # a checkpoint's own VAE beside it (`x.vae.safetensors`): vaes.py's
            path = Path(dirpath) / filename
            found.append(describe(kind, path, path.relative_to(root).as_posix()))
            if len(found) >= MAX_FILES:
                break
        if len(found) >= MAX_FILES:
            break
    return sorted(found, key=lambda f: f.name.lower())


def describe(kind: str, path: Path, name: str) -> ModelFile:
    try:
        stat = path.stat()
    except OSError as exc:
        return ModelFile(kind, name, path, 0, 0, problem=f"cannot be read ({exc.strerror})")
    family, problem = _examine(str(path), stat.st_size, stat.st_mtime_ns, kind)
    return ModelFile(kind, name, path, stat.st_size, stat.st_mtime_ns, family, problem)


@functools.lru_cache(maxsize=4096)
def _examine(path: str, size: int, mtime_ns: int, kind: str) -> tuple[str | None, str | None]:
    """(family, problem) from the file's header; cached while its size and mtime stay."""
    try:
        if path.lower().endswith(".safetensors"):
            header = safetensors_header(Path(path), size)
            return (family_of(header) if kind == "checkpoint" else None), None
        check_zip_pickle(Path(path))
        return None, None
    except Unusable as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"


def safetensors_header(path: Path, size: int | None = None) -> dict:
    """The tensors' names to their `dtype`, `shape` and `data_offsets`, checked against the
    file's size (Unusable: truncated, not a safetensors file, or a header that lies)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size if size is None else size
        start = file.read(8)
        if len(start) < 8:
            raise Unusable("not a safetensors file (shorter than its header's length)")
        length = int.from_bytes(start, "little")
        if length > MAX_HEADER:
            raise Unusable("not a safetensors file (its header's length is past 100 MB)")
        if 8 + length > size:
            raise Unusable(f"truncated: its header needs {8 + length} bytes, the file has {size}")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise Unusable("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise Unusable("not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or not isinstance(entry.get("shape"), list)
        ):
            raise Unusable(f"not a safetensors file (tensor {name[:80]!r} has no valid offsets)")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise Unusable(f"truncated: its tensors need {8 + length + end} bytes, the file has {size}")
    return header


def check_zip_pickle(path: Path) -> None:
    """A `.ckpt`/`.pt` in PyTorch's zip format, whole (its directory at the end is there)."""
    if not zipfile.is_zipfile(path):
        raise Unusable(
            "not a PyTorch zip file (truncated, or an old-style pickle, which is not loaded "
            "because a pickle can run code: convert it to .safetensors)"
        )
    with zipfile.ZipFile(path) as archive:
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist()):
            raise Unusable("not a PyTorch checkpoint (no data.pkl in the zip file)")


def shape(header: dict, key: str) -> list | None:
    entry = header.get(key)
    return entry.get("shape") if isinstance(entry, dict) else None


def family_of(tensors) -> str | None:
    """The checkpoint's family from its tensors' names and shapes (`tensors`: a safetensors
    header, or a state dict whose values have `.shape`); None where it is none of them."""

    def shape_of(key):
        value = tensors.get(key)
        if value is None:
            return None
        if isinstance(value, dict):
            return value.get("shape")
        return list(value.shape)

    unet_in = shape_of(UNET_IN)
    if unet_in is None or len(unet_in) < 2:
        return None
    inpainting = unet_in[1] == 9
    if shape_of(SDXL_TEXT_2) is not None:
        return "sdxl-inpainting" if inpainting else "sdxl"
    if shape_of(REFINER_TEXT) is not None:
        return "sdxl-refiner"
    if shape_of(SD2_TEXT) is not None:
        if inpainting:
            return "sd2-inpainting"
        # diffusers' single-file loader takes a 2.x checkpoint for the 768 px v-prediction
        # model (2.0-v, 2.1), the common one; the weights alone cannot tell 2.x-base
        # (512 px, epsilon) from it.
        return "sd2-v"
    if any(shape_of(key) is not None for key in SD1_TEXT):
        return "sd1-inpainting" if inpainting else "sd1"
    return None


def lookup(text: str, kind: str = "checkpoint") -> ModelFile | None:
    """The file a request names: by A1111's name (`sub/x.safetensors`), title (`name [hash]`),
    model_name (`sub_x`), short hash or sha256 (once known). None where nothing matches."""
    if not text or len(text) > 1000:
        return None
    from .model_hashes import known_sha256

    candidates = scan(kind)
    for match in (
        lambda f: text == f.name,
        lambda f: text == title(f),
        lambda f: text == f.model_name,
        lambda f: text.rsplit(" [", 1)[0] == f.name,
        lambda f: (sha := known_sha256(f)) is not None and text in (sha, sha[:10]),
    ):
        found = [f for f in candidates if match(f)]
        if found:
            return found[0]
    return None


def title(file: ModelFile) -> str:
    """A1111's title: `name [hash]` where the short hash is known, else the name alone."""
    from .model_hashes import known_sha256

    sha = known_sha256(file)
    return f"{file.name} [{sha[:10]}]" if sha else file.name


def offered_models() -> list[str]:
    """What the page and the API offer: SD_MODELS, then the usable checkpoints by name."""
    return list(settings.SD_MODELS) + [
        f.name for f in scan("checkpoint") if f.usable and f.name not in settings.SD_MODELS
    ]


def display_name(model: str) -> str:
    """A model as metadata and answers name it, never by a server path: a checkpoint's A1111
    model_name (`sub_dreamshaper`), a folder's own name, a hub id as it is."""
    file = lookup(model) if model.endswith((".safetensors", ".ckpt")) else None
    if file is not None:
        return file.model_name
    if model.startswith(("/", "./", "../", "~")) or os.path.isabs(model):
        return Path(model.rstrip("/")).name
    return model


def model_choices() -> list:
    """The page's model picker: SD_MODELS, then the checkpoints grouped by family (Django's
    grouped choices: an <optgroup> each), each by its name."""
    choices: list = [(m, m) for m in settings.SD_MODELS]
    groups: dict[str, list] = {}
    for file in scan("checkpoint"):
        if file.usable and file.name not in settings.SD_MODELS:
            label = FAMILIES.get(file.family or "", "Other checkpoints")
            groups.setdefault(label, []).append((file.name, file.name))
    return choices + [(label, names) for label, names in groups.items()]
