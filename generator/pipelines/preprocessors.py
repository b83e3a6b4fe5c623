"""ControlNet preprocessors: what turns an ordinary picture into a control image.

Pure functions on PIL images with OpenCV, shared by the web (`/controlnet/detect`, so the
page shows the result before a job is queued) and the worker (a job's units). Each takes the
image at its processor resolution (its short side, as sd-webui-controlnet resizes it) and the
unit's thresholds, and returns an RGB image.

A preprocessor is listed only where it can run: the OpenCV ones always, the model-based ones
of controlnet-aux (depth, lineart, openpose...) where that package and the annotator's weights
are here (`available`), which this project does not ship (controlnet-aux needs torchvision).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: object
    """run(rgb uint8 array, threshold_a, threshold_b) -> uint8 array (H, W) or (H, W, 3)."""
    resolution: bool = True
    """Whether it works at a processor resolution (sd-webui-controlnet's `processor_res`)."""
    threshold_a: tuple | None = None
    """(label, default, minimum, maximum) of its first threshold, None where it has none."""
    threshold_b: tuple | None = None


def _none(pixels, a, b):
    return pixels


def _canny(pixels, low, high):
    import cv2

    # On all three channels, as the extension does: OpenCV takes the strongest gradient
    # of them, so a red shape on a blue ground of the same grey still has its edge.
    return cv2.Canny(pixels, int(low), int(high))


def _invert(pixels, a, b):
    return 255 - pixels


def _grey(pixels):
    import cv2

    return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


def _threshold(pixels, level, b):
    import numpy

    return numpy.where(_grey(pixels) > level, 255, 0).astype("uint8")


def _scribble(pixels, level, b):
    """Dark strokes on light paper become white lines on black, as scribble models take them."""
    import numpy

    return numpy.where(_grey(pixels) < level, 255, 0).astype("uint8")


PREPROCESSORS = {
    p.name: p
    for p in (
        Preprocessor("none", _none, resolution=False),
        Preprocessor(
            "canny",
            _canny,
            threshold_a=("Canny Low Threshold", 100, 1, 255),
            threshold_b=("Canny High Threshold", 200, 1, 255),
        ),
        Preprocessor("invert", _invert),
        Preprocessor("threshold", _threshold, threshold_a=("Binarization Threshold", 127, 0, 255)),
        Preprocessor("scribble", _scribble, threshold_a=("Binarization Threshold", 127, 0, 255)),
    )
}
ALIASES = {"invert (from white bg & black line)": "invert", "scribble_threshold": "scribble"}
"""The extension's other names for the same preprocessors."""
DEFAULT_RESOLUTION = 512
MAX_PIXELS = 2048 * 2048
"""The most pixels a preprocessor works on: a long thin picture at a high processor resolution
(100x10000 at 2048 would be 2048x204800) is scaled to fit this instead."""


def available() -> dict[str, Preprocessor]:
    """The preprocessors that can run here, by name (see the module's note on the others)."""
    return dict(PREPROCESSORS)


def find(name: str) -> Preprocessor | None:
    name = ALIASES.get(name, name)
    return available().get(name)


def pixel_perfect_resolution(image_size: tuple[int, int], target: tuple[int, int], mode: str):
    """sd-webui-controlnet's pixel perfect: the processor resolution at which the control image
    lands on the output at one pixel per pixel, for its resize mode (`crop and resize` scales
    to cover the target, the others to fit in it)."""
    width, height = image_size
    target_w, target_h = target
    scales = (target_h / height, target_w / width)
    scale = max(scales) if mode == "crop and resize" else min(scales)
    return int(round(scale * min(width, height)))


def run(image, name: str, resolution: int | None, threshold_a=None, threshold_b=None):
    """`image` (PIL) through the preprocessor `name` at `resolution` (its short side; None:
    as it is). Unknown names raise KeyError."""
    import numpy
    from PIL import Image

    processor = find(name)
    if processor is None:
        raise KeyError(name)
    image = image.convert("RGB")
    if processor.resolution and resolution:
        scale = resolution / min(image.size)
        scale = min(scale, (MAX_PIXELS / (image.width * image.height)) ** 0.5)
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    a = threshold_a if threshold_a is not None and processor.threshold_a else None
    b = threshold_b if threshold_b is not None and processor.threshold_b else None
    a = processor.threshold_a[1] if a is None and processor.threshold_a else a
    b = processor.threshold_b[1] if b is None and processor.threshold_b else b
    result = processor.run(numpy.asarray(image), a, b)
    return Image.fromarray(numpy.ascontiguousarray(result)).convert("RGB")
