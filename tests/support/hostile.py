"""Hostile inputs for the parsers of user data (issue 30), shared by the tests and the bench."""

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_with_text(texts: dict[str, str], compressed: bool = True) -> bytes:
    """A 1x1 PNG carrying `texts` as zTXt chunks (tEXt with `compressed=False`): a megabyte
    of repeated text weighs a couple of kilobytes."""
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value, zip=compressed)
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def settings_line_without_colon(length: int) -> str:
    """The issue's A1111 text: it says `Steps: `, so sdsite's own reader takes it, and its
    settings line (the last) goes on as one long run of key characters with no colon after
    it, which A1111's pattern rescans from each of its characters."""
    return "a cat\nSteps: 20, " + "a" * length


def hostile_png(length: int) -> bytes:
    return png_with_text({"parameters": settings_line_without_colon(length)})
