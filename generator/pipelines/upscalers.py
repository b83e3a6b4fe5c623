"""Upscalers, by A1111's names: `None`, `Lanczos`, `Nearest`, the latent modes (hires fix
only), and each model file of A1111's upscaler folders (`models/ESRGAN`, `RealESRGAN`,
`SwinIR`, `DAT`) or SD_UPSCALER_DIR, named by its stem and loaded with spandrel, which
tells ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT... apart by their state dicts.

A model runs on tiles of SD_UPSCALE_TILE pixels a side, each with `TILE_OVERLAP` pixels of
its neighbours around it that are cut away after (A1111's ESRGAN tile and overlap), so its
memory is bounded by a tile's whatever the image's size; `on_tile(done, total)` reports
them. Listing and checking names reads only the files' headers (`checkpoints.scan`): the
web never imports torch. A file that cannot be used is listed with its reason.
"""

import functools
import math
import re
import sys
import types
from dataclasses import dataclass

from django.conf import settings

from .checkpoints import ModelFile, scan

NONE = "None"
IMAGE_UPSCALERS = (NONE, "Lanczos", "Nearest")
"""The upscalers without a model, as A1111 lists them first."""
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
"""A1111's latent upscale modes: (torch's interpolation mode, antialias)."""
MODEL_KINDS = ("esrgan", "realesrgan", "swinir", "dat", "upscaler")
"""checkpoints.KINDS that hold upscaler models, in the order a name is looked up."""
TILE_OVERLAP = 8
MAX_MODEL_PASSES = 4
"""A 1x or 2x model runs again on its own output until the size is reached, at most this often."""


@dataclass(frozen=True)
class Upscaler:
    name: str
    file: ModelFile | None = None

    @property
    def problem(self) -> str | None:
        return self.file.problem if self.file is not None else None


def model_files() -> dict[str, ModelFile]:
    """{stem: file} of every upscaler folder; the first folder's file wins a shared stem."""
    found: dict[str, ModelFile] = {}
    for kind in MODEL_KINDS:
        for file in scan(kind):
            found.setdefault(file.stem, file)
    return found


def available(latent: bool = False) -> list[Upscaler]:
    """The upscalers in A1111's order (the latent modes after the plain ones, with `latent`),
    usable or not."""
    plain = [Upscaler(name) for name in IMAGE_UPSCALERS]
    latents = [Upscaler(name) for name in LATENT_MODES] if latent else []
    return plain + latents + [Upscaler(stem, file) for stem, file in model_files().items()]


def problem_of(name: str, latent: bool = False) -> str | None:
    """Why `name` cannot upscale (unknown, a latent mode where an image is upscaled, or an
    unusable file); None where it can."""
    if latent and name in LATENT_MODES:
        return None
    known = {upscaler.name: upscaler for upscaler in available(latent)}
    if name not in known:
        if name in LATENT_MODES:
            return f"{name} upscales latents: only the hires fix can use it."
        shown = ", ".join(known)
        return f"Upscaler not found: {name[:100]!r}; use one of {shown}."
    problem = known[name].problem
    return f"The upscaler {name} cannot be used: {problem}" if problem else None


def listing() -> list[dict]:
    """GET /sdapi/v1/upscalers: A1111's fields; `model_path` relative to its folder (no
    server path), `unusable` with the reason for a file that cannot be used."""
    entries = []
    for upscaler in available():
        file = upscaler.file
        entry = {
            "name": upscaler.name,
            "model_name": None if file is None else model_family(file),
            "model_path": None if file is None else file.name,
            "model_url": None,
            "scale": None if file is None else scale_of(file.stem),
        }
        if file is not None and file.problem:
            entry["unusable"] = file.problem
        entries.append(entry)
    return entries


def scale_of(stem: str) -> int:
    """The scale a model's name gives (`4x-UltraSharp`, `RealESRGAN_x2plus`), else A1111's 4."""
    found = re.search(r"(?:^|[^a-z0-9])x?(\d)x?(?:[^a-z0-9]|plus|$)", stem.lower())
    return int(found.group(1)) if found else 4


def model_family(file: ModelFile) -> str:
    """A1111's `model_name` of a model upscaler: the folder's family (ESRGAN, SwinIR...)."""
    return {"esrgan": "ESRGAN", "realesrgan": "RealESRGAN", "swinir": "SwinIR", "dat": "DAT"}.get(
        file.kind, "spandrel"
    )


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple:
    """The hires fix's output size, as A1111 computes it: `scale` times the first pass,
    or `resize_x` x `resize_y` (one of them 0: kept in proportion), rounded down to the
    8 pixels a latent holds."""
    return target_size(width, height, scale, resize_x, resize_y, multiple=8)


def target_size(
    width: int, height: int, scale: float, resize_x: int, resize_y: int, multiple: int = 1
) -> tuple:
    """`scale` times (width, height), or resize_x x resize_y (one of them 0: in proportion),
    rounded down to `multiple`."""
    if not resize_x and not resize_y:
        target = (width * scale, height * scale)
    elif not resize_y:
        target = (resize_x, resize_x * height / width)
    elif not resize_x:
        target = (resize_y * width / height, resize_y)
    else:
        target = (resize_x, resize_y)
    return tuple(max(multiple, int(side) // multiple * multiple) for side in target)


def cover_size(start: tuple, size: tuple, multiple: int = 1) -> tuple:
    """The smallest size of `start`'s shape that covers `size` (rounded up to `multiple`):
    where A1111 upscales to before it crops to a size of another shape."""
    scale = max(size[0] / start[0], size[1] / start[1])
    return tuple(
        max(want, math.ceil(round(side * scale, 6) / multiple) * multiple)
        for side, want in zip(start, size, strict=True)
    )


def center_crop(picture, size: tuple):
    """The middle `size` (w, h) of a PIL image, or of latents (N, C, h, w)."""
    if hasattr(picture, "crop"):
        if picture.size == tuple(size):
            return picture
        left, top = (picture.width - size[0]) // 2, (picture.height - size[1]) // 2
        return picture.crop((left, top, left + size[0], top + size[1]))
    height, width = picture.shape[-2:]
    left, top = (width - size[0]) // 2, (height - size[1]) // 2
    return picture[..., top : top + size[1], left : left + size[0]]


def second_pass_schedule(steps: int, strength: float) -> int:
    """The `num_inference_steps` that makes an image-to-image pipeline at `strength` run
    exactly `steps` steps (A1111's hires steps: it schedules steps / strength and runs the
    last ones). diffusers runs `min(int(n * strength), n)` of `n`."""

    def runs(n: int) -> int:
        return min(int(n * strength), n)

    n = max(steps, math.ceil(steps / strength))
    while runs(n) < steps:
        n += 1
    while n > steps and runs(n - 1) >= steps:
        n -= 1
    return n


def torch_device(device: str) -> str:
    """The PyTorch device for a worker's SD_DEVICE (an OpenVINO name such as GPU: the CPU)."""
    return device if device.split(":")[0] in ("cpu", "cuda", "mps", "xpu") else "cpu"


def upscale_latents(latents, mode: str, size: tuple):
    """Latents (N, C, h, w) resized to an image of `size` (w, h) with a latent mode."""
    import torch.nn.functional as F

    interpolation, antialias = LATENT_MODES[mode]
    width, height = size
    target = (height // 8, width // 8)
    if interpolation in ("bilinear", "bicubic"):
        return F.interpolate(
            latents, size=target, mode=interpolation, antialias=antialias, align_corners=False
        )
    return F.interpolate(latents, size=target, mode=interpolation)


def upscale(image, name: str, size: tuple, device: str = "cpu", on_tile=None, done: int = 0):
    """`image` (PIL) upscaled with the upscaler `name` to exactly `size` (w, h). `None`
    resizes as Lanczos (as A1111's hires fix does); a model runs tiled on `device`, and
    `on_tile(done + tiles done, done + tiles in all)` follows it (`tile_total`)."""
    from PIL import Image

    if name in (NONE, "Lanczos"):
        return image.resize(size, Image.Resampling.LANCZOS)
    if name == "Nearest":
        return image.resize(size, Image.Resampling.NEAREST)
    model = model_for(name, device)
    image = image.convert("RGB")
    counts = [
        len(tiles(w, h, settings.SD_UPSCALE_TILE))
        for w, h in model_passes(model.scale, image.size, size)
    ]
    total = done + sum(counts)
    for count in counts:

        def report(step: int, _: int, before: int = done) -> None:
            if on_tile is not None:
                on_tile(before + step, total)

        image = run_tiled(model, image, device, on_tile=report)
        done += count
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def model_for(name: str, device: str):
    problem = problem_of(name)
    if problem:
        raise ValueError(problem)
    return load_model(model_files()[name], device)


def model_passes(scale: int, start: tuple, size: tuple) -> list[tuple[int, int]]:
    """The sizes a model of `scale` runs at to reach `size` from `start` (a 4x model once
    for 2x, then Lanczos down; a 2x model twice for 4x; a 1x model once)."""
    width, height = start
    passes = []
    while len(passes) < MAX_MODEL_PASSES and (width < size[0] or height < size[1] or not passes):
        passes.append((width, height))
        if scale == 1:
            break
        width, height = width * scale, height * scale
    return passes


def tile_total(name: str, start: tuple, size: tuple, device: str) -> int:
    """How many tiles upscaling `start` to `size` with `name` runs (0 without a model)."""
    if name in IMAGE_UPSCALERS:
        return 0
    passes = model_passes(model_for(name, device).scale, start, size)
    return sum(len(tiles(w, h, settings.SD_UPSCALE_TILE)) for w, h in passes)


def tiles(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The (x0, y0, x1, y1) cores that cover the image, row by row."""
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in range(0, height, tile)
        for x in range(0, width, tile)
    ]


def run_tiled(model, image, device: str, tile: int | None = None, on_tile=None):
    """One pass of a spandrel model over `image`, a tile at a time: each core with
    TILE_OVERLAP pixels of context around it, whose upscaled border is cut away."""
    import numpy as np
    import torch
    from PIL import Image

    tile = tile or settings.SD_UPSCALE_TILE
    scale = model.scale
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    _, height, width = pixels.shape
    # The picture is assembled in bytes (3 a pixel): past a tile's activations, that is
    # all the memory that grows with the image.
    out = torch.zeros((3, height * scale, width * scale), dtype=torch.uint8)
    cores = tiles(width, height, tile)
    half = device.startswith("cuda") and model.supports_half
    with torch.inference_mode():
        for done, (x0, y0, x1, y1) in enumerate(cores, start=1):
            px0, py0 = max(x0 - TILE_OVERLAP, 0), max(y0 - TILE_OVERLAP, 0)
            px1, py1 = min(x1 + TILE_OVERLAP, width), min(y1 + TILE_OVERLAP, height)
            piece = pixels[:, py0:py1, px0:px1].unsqueeze(0).to(device)
            result = model(piece.half() if half else piece).float().clamp(0, 1)[0]
            left, top = (x0 - px0) * scale, (y0 - py0) * scale
            core = result[:, top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale]
            out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = (
                (core * 255.0).round().to(torch.uint8).cpu()
            )
            if on_tile is not None:
                on_tile(done, len(cores))
    return Image.fromarray(out.permute(1, 2, 0).contiguous().numpy())


class NotAnUpscaler(ValueError):
    """A model file spandrel does not recognise as an image-to-image model."""


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int, device: str):
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise NotAnUpscaler("is no upscaler model spandrel recognises") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise NotAnUpscaler(f"is a {descriptor.architecture.name} model, not an upscaler")
    if device.startswith("cuda") and descriptor.supports_half:
        descriptor.half()
    return descriptor.eval()


def load_model(file: ModelFile, device: str):
    """The spandrel model of `file` on `device` (the last few kept loaded)."""
    try:
        return _load(str(file.path), file.size, file.mtime_ns, device)
    except NotAnUpscaler as exc:
        raise NotAnUpscaler(f"The upscaler {file.stem} {exc}.") from None


TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def import_spandrel():
    """spandrel, imported with the real torchvision where it imports, else with a stand-in.

    `import spandrel` imports every architecture it knows, and two restoration models
    (LaMa, RestoreFormer: no upscalers) import `torchvision.transforms.functional` to do
    so. sdsite installs spandrel without torchvision (requirements-nodeps.txt: PyPI's
    torchvision for the pinned torch is a CUDA build that does not import here), so the
    import runs with `stand_in_torchvision()` in `sys.modules` and takes it out again:
    spandrel's two modules keep the functions they imported, and nothing else ever sees a
    torchvision (transformers' `is_torchvision_available()` stays False).
    """
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # not installed, or a build that does not fit this torch
        for name in TORCHVISION:
            sys.modules.pop(name, None)
    else:
        import spandrel

        return spandrel
    stand_ins = stand_in_torchvision()
    sys.modules.update(stand_ins)
    try:
        import spandrel
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return spandrel


def stand_in_torchvision() -> dict:
    """The names LaMa and RestoreFormer import from `torchvision.transforms.functional`,
    each saying, if ever called, that those models need the real torchvision."""

    def missing(*args, **kwargs):
        raise RuntimeError(
            "This model needs torchvision, which is not installed with sdsite's CPU torch "
            "(requirements-nodeps.txt): upscalers do not use it."
        )

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(
        NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic"
    )
    functional.rotate = functional.normalize = missing
    package.transforms, transforms.functional = transforms, functional
    return {"torchvision": package, TORCHVISION[1]: transforms, TORCHVISION[2]: functional}
