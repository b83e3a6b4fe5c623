"""OpenVINO IR on disk: where an exported model is cached, and exporting it once."""

import hashlib
import logging
import re
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from . import single_file
from .sources import resolve_model

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
"""fp16 halves the weights; int8 compresses them to 8 bits (NNCF weight compression,
per channel, no calibration data: nothing to download), a quarter of fp32's size."""


def holds_openvino_ir(source: str) -> bool:
    """Whether `source` (a folder or hub id) is already OpenVINO IR, so needs no export."""
    path = Path(source)
    if path.is_dir():
        return any(path.glob("*/openvino_model.xml"))
    # Hub ids cannot be inspected offline; OpenVINO's own repos follow this naming.
    name = source.lower()
    return name.startswith("openvino/") or name.endswith(("-ov", "-openvino"))


def ir_cache_dir(model: str, precision: str) -> Path:
    """The cache folder of one model at one precision, e.g. models/openvino/demo-3f2a-fp32.

    For a model in a local folder (the demo included) the name also depends on its
    files (names, sizes, times): new weights in the same folder are exported anew,
    never served from the IR of the old ones."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")[-60:] or "model"
    digest = hashlib.sha256(model.encode())
    try:
        folder = Path(resolve_model(model))
    except FileNotFoundError:
        folder = None
    if folder is not None and folder.is_file():  # a single file: a changed one is new
        stat = folder.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(
                    f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
                )
    return settings.MODELS_DIR / "openvino" / f"{slug}-{digest.hexdigest()[:8]}-{precision}"


def is_cached(cache_dir: Path) -> bool:
    return (cache_dir / "model_index.json").exists()


def export_to_ir(source: str, cache_dir: Path, precision: str) -> Path:
    """Export a diffusers model to OpenVINO IR in `cache_dir` (atomically) and return it.

    A single-file checkpoint is loaded first (`single_file`, offline) and written as a
    diffusers folder for the export, which reads only folders; the folder goes after it."""
    from optimum.intel import OVPipelineForText2Image

    if precision not in PRECISIONS:
        raise ValueError(f"Unknown OpenVINO precision {precision!r}: use one of {PRECISIONS}.")
    logger.info("Exporting %s to OpenVINO IR (%s) in %s", source, precision, cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir.parent))
    converted = None
    try:
        if single_file.is_single_file(source):
            converted = Path(tempfile.mkdtemp(prefix=".single-file-", dir=cache_dir.parent))
            write_diffusers_folder(Path(source), converted)
            source = str(converted)
        pipe = OVPipelineForText2Image.from_pretrained(
            source, export=True, compile=False, load_in_8bit=precision == "int8"
        )
        if precision == "fp16":
            pipe.half()
        pipe.save_pretrained(staging)
        del pipe
        try:
            staging.rename(cache_dir)
        except OSError:  # another worker finished the same export first
            if not is_cached(cache_dir):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if converted is not None:
            shutil.rmtree(converted, ignore_errors=True)
    return cache_dir


def write_diffusers_folder(checkpoint: Path, folder: Path) -> None:
    """The checkpoint as a diffusers folder (float32, the export's own precision)."""
    import torch

    pipe = single_file.load_pipeline(checkpoint, torch.float32)
    pipe.save_pretrained(folder)
