"""Input images: untrusted uploads checked before decoding, and fitted to the job on the worker.

Uploads are limited in bytes (SD_MAX_UPLOAD_MB) before Pillow sees them and in
pixels (SD_MAX_UPLOAD_PIXELS) from the header, before the pixels are decoded,
so neither a huge file nor a decompression bomb costs the server more than the
limits. What is stored is a re-encoded PNG, never the uploaded bytes.
"""

import base64
import binascii
import io
import math

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PREPROCESS_IMAGES = 4
"""The most images one preprocessor request (`/controlnet/detect`) runs."""


def read_upload(upload, *, kind: str = "RGB") -> Image.Image:
    """The uploaded file as a decoded image in mode `kind`, or a ValidationError saying why not."""
    image = open_upload(upload)
    return ImageOps.exif_transpose(image).convert(kind)


def base64_upload(value: str, name: str) -> SimpleUploadedFile:
    """A base64 image (with or without a data: URL prefix) as an upload, checked later like
    any other (an undecodable text is an empty file: "Not an image")."""
    if "," in value[:100] and value.startswith("data:"):
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        data = b""
    return SimpleUploadedFile(f"{name}.png", data)


def open_upload(upload) -> Image.Image:
    """The uploaded image, checked in bytes and pixels before its pixels are decoded."""
    limit = settings.SD_MAX_UPLOAD_MB * 1024 * 1024
    if upload.size > limit:
        raise ValidationError(
            f"The file is larger than {settings.SD_MAX_UPLOAD_MB:g} MB.", code="too_large"
        )
    data = upload.read(int(limit) + 1)
    allowed = f"{settings.SD_MAX_UPLOAD_PIXELS:,} allowed"
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # its header claims over twice Pillow's own limit
        raise ValidationError(
            f"The image has more pixels than the {allowed}.", code="too_many_pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ValidationError("Not an image: send a PNG, JPEG or WebP.", code="not_image") from None
    width, height = image.size
    if width * height > settings.SD_MAX_UPLOAD_PIXELS:
        raise ValidationError(
            f"The image has {width}x{height} pixels, more than {allowed}.",
            code="too_many_pixels",
        )
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise ValidationError("The image is damaged or truncated.", code="damaged") from None
    return image


def as_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def output_size(image: Image.Image, model_size: int) -> tuple[int, int]:
    """The output size an input image asks for: its own, or for an image of more pixels than
    the model's own size squared, its shape at about that many pixels (as InvokeAI does: a
    model draws badly, slowly and with far more memory far above its size); in multiples
    of 8 within 64..2048. A 4032x3024 photo at SD 1.5's 512 gives 584x440."""
    scale = min(1.0, model_size / math.sqrt(image.width * image.height))

    def fit(side: int) -> int:
        return max(64, min(2048, int(side * scale) // 8 * 8))

    return fit(image.width), fit(image.height)


def fitted(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`image` at `size`, by A1111's resize modes.

    `just resize` stretches; `crop and resize` fills the size and crops what
    sticks out; `resize and fill` fits the whole image in and fills the rest
    with its average colour.
    """
    if image.size == size:
        return image
    if mode == "crop and resize":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if mode == "resize and fill":
        colour = tuple(int(c) for c in ImageStat.Stat(image).mean)
        return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=colour)
    return image.resize(size, Image.Resampling.LANCZOS)


def blurred_mask(mask: Image.Image, blur: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def filled(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Inpainting's `fill`: the masked area painted with the average colour of the rest."""
    keep = ImageOps.invert(mask.point(lambda v: 255 if v > 127 else 0))
    if not keep.getbbox():  # everything is masked
        return image
    colour = tuple(int(c) for c in ImageStat.Stat(image, keep).mean)
    return Image.composite(Image.new("RGB", image.size, colour), image, mask)


def pasted_back(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated image inside the (blurred) mask, the original everywhere else."""
    return Image.composite(generated.convert("RGB"), original, mask)
