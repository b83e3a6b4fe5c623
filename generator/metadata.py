"""PNG metadata: A1111's `parameters` text, which existing tools read, and sdsite's own JSON."""

import contextlib
import json
import re

from PIL.PngImagePlugin import PngInfo

from .params import PARAMETERS

A1111_KEY = "parameters"
SDSITE_KEY = "sdsite"


def a1111_parameters(session) -> str:
    """`prompt`, `Negative prompt: ...`, then the settings line, as A1111 writes them."""
    values = session.parameters()
    lines = [values.pop("prompt")]
    if values.get("negative_prompt"):
        lines.append(f"Negative prompt: {values['negative_prompt']}")
    settings = {}
    for parameter in PARAMETERS:
        if parameter.name == "width":  # A1111 writes the two sides as one setting
            settings["Size"] = f"{values['width']}x{values['height']}"
        # The negative prompt has its own line above; unused image settings are left out.
        skipped = parameter.name == "negative_prompt" or parameter.name not in values
        if not parameter.a1111 or skipped:
            continue
        value = values[parameter.name]
        settings[parameter.a1111] = f"{value:g}" if isinstance(value, float) else value
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


def read_parameters(image) -> tuple[str, dict]:
    """(source, parameters): the generation parameters an image carries, by sdsite's names.

    sdsite's own chunk first; then A1111, ComfyUI, InvokeAI, Fooocus and others
    through sd-parsers. ("", {}) for an image without any.
    """
    from .params import BY_A1111_API, BY_NAME
    from .pipelines.schedulers import SCHEDULERS

    own = image.info.get(SDSITE_KEY)
    if own:
        try:
            values = json.loads(own)
        except ValueError:
            values = None
        if isinstance(values, dict):
            return "sdsite", {k: v for k, v in values.items() if k in BY_NAME}
    from sd_parsers import ParserManager

    try:
        info = ParserManager().parse(image)
    except Exception:  # a reader's failure is "no settings", never an error
        info = None
    if info is None or not (info.samplers or info.full_prompt):
        return "", {}
    found = {"prompt": info.full_prompt, "negative_prompt": info.full_negative_prompt}
    if info.samplers:
        sampler = info.samplers[0]
        if sampler.name in SCHEDULERS:
            found["scheduler"] = sampler.name
        kinds = {"int": int, "float": float}
        for key, value in sampler.parameters.items():
            known = BY_A1111_API.get(key)
            if known is not None and known.kind in kinds:
                with contextlib.suppress(TypeError, ValueError):
                    found[known.name] = kinds[known.kind](value)
    size = str(info.metadata.get("Size", ""))
    if re.fullmatch(r"\d+x\d+", size):
        found["width"], found["height"] = (int(side) for side in size.split("x"))
    return info.generator.name.lower(), {k: v for k, v in found.items() if v not in ("", None)}
