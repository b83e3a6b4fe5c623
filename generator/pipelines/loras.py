"""LoRA files: which there are, what model family each fits, and where one named in a prompt is.

A LoRA is a `.safetensors` file (kohya's or diffusers' format) in SD_LORA_DIR
(default `$DATA_DIR/loras`), or the demo model's own (`demo-swap`). The web lists
them (`GET /api/loras`) and checks every `<lora:name:weight>` before a job is
queued; the worker loads them (pipelines.torch_backend). A name is a file name
without its extension, in the folder itself: never a path.
"""

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from ..prompts import extract_loras
from .demo.lora import BASE_MODEL as DEMO_BASE_MODEL
from .demo.lora import LORAS as DEMO_LORAS


class UnknownLora(ValueError):
    """A prompt names a LoRA that is not there (or not a plain name)."""


@dataclass(frozen=True)
class Lora:
    name: str
    path: Path

    @property
    def family(self) -> str | None:
        return base_model_family(self.path)


def folders() -> list[Path]:
    return [Path(settings.SD_LORA_DIR), DEMO_LORAS]


def available() -> dict[str, Lora]:
    """Every LoRA by name (SD_LORA_DIR first: a file there may stand in for the demo's)."""
    found: dict[str, Lora] = {}
    for folder in folders():
        if folder.is_dir():
            for path in sorted(folder.glob("*.safetensors")):
                found.setdefault(path.stem, Lora(path.stem, path))
    return found


def find(name: str) -> Lora:
    """The LoRA called `name`, or UnknownLora (also for anything that looks like a path)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute():
        raise UnknownLora(f"<lora:{name}> is not a LoRA name (a file name, never a path).")
    lora = available().get(name)
    if lora is None:
        raise UnknownLora(f"No LoRA named {name!r} in SD_LORA_DIR; GET /api/loras lists them.")
    return lora


def loras_of(prompt: str) -> list[tuple[Lora, float]]:
    """The LoRA a prompt's `<lora:name:weight>` tags name, with their weights (UnknownLora)."""
    return [(find(use.name), use.weight) for use in extract_loras(prompt)[1]]


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: the sha256 of a safetensors file's tensors (its "addnet" hash)."""
    from .sources import file_sha256

    return file_sha256(path, skip_header=True)


def hashes_text(*prompts: str) -> str:
    """A1111's `Lora hashes` value ("name: 12 hex digits, ..."), "" when none is used. The
    digits are A1111's `shorthash` of a LoRA file: the first 12 of its safetensors hash
    (`lora_hash`); a name loses its `:` and `,` there, as in A1111."""
    from .embeddings import alias

    named = {}
    for prompt in prompts:
        for lora, _ in loras_of(prompt):
            named[alias(lora.name)] = lora_hash(lora.path)[:12]
    return ", ".join(f"{name}: {digest}" for name, digest in named.items())


def header(path: Path) -> dict:
    """A safetensors file's JSON header (its tensor names and `__metadata__`), read alone."""
    with open(path, "rb") as file:
        size = struct.unpack("<Q", file.read(8))[0]
        if size > 100 * 1024 * 1024:
            raise ValueError(f"{path.name}: not a safetensors file")
        return json.loads(file.read(size))


def base_model_family(path: Path) -> str | None:
    """The model family a LoRA fits, where it can be told: from kohya's metadata, else from
    its tensor names (SDXL's second text encoder, SD3's and Flux's transformer)."""
    try:
        head = header(path)
    except (OSError, ValueError):
        return None
    named = (head.get("__metadata__") or {}).get("ss_base_model_version", "")
    if named == DEMO_BASE_MODEL:
        return "demo"
    if named:
        return named.split("_")[0]  # "sdxl_base_v1-0" -> "sdxl", "sd_v1" -> "sd"
    keys = " ".join(key for key in head if key != "__metadata__")
    if "lora_te2_" in keys or "text_encoder_2" in keys:
        return "sdxl"
    if "transformer." in keys or "lora_transformer_" in keys:
        return "flux or sd3"
    if "lora_unet_" in keys or "unet." in keys:
        return "sd"
    return None
