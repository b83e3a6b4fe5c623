"""PNG metadata: A1111's `parameters` text, which existing tools read, and sdsite's own JSON."""

import json
import re

from PIL.PngImagePlugin import PngInfo

A1111_KEY = "parameters"
SDSITE_KEY = "sdsite"


def a1111_parameters(session) -> str:
    """`prompt`, `Negative prompt: ...`, then the settings line, as A1111 writes them."""
    lines = [session.prompt]
    if session.negative_prompt:
        lines.append(f"Negative prompt: {session.negative_prompt}")
    settings = {
        "Steps": session.steps,
        "Sampler": session.scheduler,
        "CFG scale": f"{session.guidance_scale:g}",
        "Seed": session.seed,
        "Size": f"{session.width}x{session.height}",
        "Model": session.model,
        "Backend": session.backend,
    }
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def png_info(session) -> PngInfo:
    info = PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(session))
    info.add_text(SDSITE_KEY, json.dumps({"session_id": str(session.pk), **session.parameters()}))
    return info


SETTING = re.compile(r"\s*([\w ]+):\s*([^,]+)(?:,|$)")


def parse_a1111(text: str) -> dict:
    """Read A1111 `parameters` text back: prompt, negative prompt and the settings."""
    *prompt_lines, settings_line = text.split("\n")
    negative = ""
    for index, line in enumerate(prompt_lines):
        if line.startswith("Negative prompt: "):
            negative = "\n".join(prompt_lines[index:])[len("Negative prompt: ") :]
            prompt_lines = prompt_lines[:index]
            break
    settings = {key.strip(): value.strip() for key, value in SETTING.findall(settings_line)}
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": negative, **settings}
