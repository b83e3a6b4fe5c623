"""PNG metadata: A1111's `parameters` text, which existing tools read, and sdsite's own JSON."""

import contextlib
import json
import re

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from . import __version__
from .params import CONTROL_RESIZE_LABELS, CONTROL_UNIT, PARAMETERS
from .pipelines.checkpoints import display_name

A1111_KEY = "parameters"
SDSITE_KEY = "sdsite"


def quote(value) -> str:
    """A setting's value as A1111 writes it: in JSON quotes when it holds `,`, `:` or a
    line break (its `quote()`), else as it is; floats as Python prints them ("7.0")."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_parameters(
    session,
    model_hash: str | None = None,
    lora_hashes: str = "",
    vae: tuple[str, str] | None = None,
    ti_hashes: str = "",
) -> str:
    """`prompt`, `Negative prompt: ...`, then the settings line, as A1111 (1.9 and later)
    writes them: the sampler and its schedule type apart, the model's short hash before its
    name, then the VAE file's (`vae`: its short hash and file name, where the job used one),
    the LoRA's and embeddings' hashes (`name: sha256[:12], ...`) and sdsite's version last."""
    from .pipelines.schedulers import a1111_sampler

    values = session.parameter_values()
    lines = [values.pop("prompt")]
    if values.get("negative_prompt"):
        lines.append(f"Negative prompt: {values['negative_prompt']}")
    settings = {}
    for parameter in PARAMETERS:
        if parameter.name == "width" and "width" in values:  # the two sides as one setting
            settings["Size"] = f"{values['width']}x{values['height']}"
        if parameter.name == "model" and model_hash:
            settings["Model hash"] = model_hash
        if parameter.name == "sd_vae":
            if vae:  # A1111 names the file it loaded, not the choice (`Automatic`)
                settings["VAE hash"], settings["VAE"] = vae
            continue
        # The negative prompt has its own line above; unused image settings are left out.
        skipped = parameter.name == "negative_prompt" or parameter.name not in values
        if not parameter.a1111 or skipped:
            continue
        value = values[parameter.name]
        if parameter.a1111_omit_default and value == parameter.default:
            continue  # as A1111 leaves out `Clip skip: 1`
        if parameter.name == "scheduler":
            value, schedule_type = a1111_sampler(value)
            settings["Sampler"] = value
            chosen = values.get("schedule_type", "Automatic")
            if chosen != "Automatic" or schedule_type:
                settings["Schedule type"] = schedule_type if chosen == "Automatic" else chosen
            continue
        if parameter.name == "schedule_type":
            continue  # written beside the sampler
        if parameter.name == "model":
            value = display_name(value)  # A1111's `Model: name`, never a server path
        if parameter.name == "hr_scale":
            if values["hr_resize_x"] or values["hr_resize_y"]:
                # A1111 writes the size asked for instead of the scale.
                settings["Hires resize"] = f"{values['hr_resize_x']}x{values['hr_resize_y']}"
                continue
            value = f"{value:g}"  # `Hires upscale: 2`, as A1111's slider gives it
        settings[parameter.a1111] = value
    for index, unit in enumerate(values.get("controlnet") or ()):
        settings[f"ControlNet {index}"] = control_unit_text(unit)
    if lora_hashes:
        settings["Lora hashes"] = lora_hashes
    if ti_hashes:
        settings["TI hashes"] = ti_hashes
    settings["Version"] = f"sdsite {__version__}"
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def number(value) -> str:
    """A number as sd-webui-controlnet's infotext shows it: `1`, `0.5`."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def control_unit_text(unit: dict) -> str:
    """One ControlNet unit as sd-webui-controlnet writes it in the infotext:
    `Module: canny, Model: name [hash], Weight: 1, Resize Mode: Crop and Resize, ...`."""
    from .pipelines import controlnet, preprocessors

    parts = []
    for field in CONTROL_UNIT:
        value = unit.get(field.name, field.default)
        if not field.a1111:
            continue
        if field.name == "model":
            found = controlnet.lookup(value)
            value = found.title if found is not None else value
        elif field.name == "resize_mode":
            value = CONTROL_RESIZE_LABELS[value]
        elif field.name in ("threshold_a", "threshold_b") and value is None:
            processor = preprocessors.find(unit.get("module", "none"))
            default = getattr(processor, field.name, None) if processor else None
            if default is None:
                continue
            value = default[1]
        parts.append(f"{field.a1111}: {number(value)}")
    return ", ".join(parts)


def control_unit_of(text: str) -> dict:
    """A ControlNet unit from its infotext (`control_unit_text`'s), as far as it reads."""
    by_label = {field.a1111: field for field in CONTROL_UNIT if field.a1111}
    resize_modes = {label: mode for mode, label in CONTROL_RESIZE_LABELS.items()}
    unit = {}
    for key, value in SETTING.findall(text):
        field = by_label.get(key.strip())
        value = unquote(value.strip())
        if field is None:
            continue
        with contextlib.suppress(ValueError):
            if field.kind == "float":
                unit[field.name] = float(value)
            elif field.kind == "int":
                unit[field.name] = int(float(value))
            elif field.kind == "bool":
                unit[field.name] = value == "True"
            elif field.name == "resize_mode":
                unit[field.name] = resize_modes.get(value, value.lower())
            else:
                unit[field.name] = value
    return unit


def png_info(session, **hashes) -> PngInfo:
    """The PNG's texts; `hashes`: a1111_parameters' model_hash, lora_hashes, vae, ti_hashes."""
    info = PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(session, **hashes))
    info.add_text(
        SDSITE_KEY, json.dumps({"session_id": str(session.pk), **session.parameter_values()})
    )
    return info


SETTING = re.compile(r'(?<![\w \-/])[ \-/]*+(\w[\w \-/]++):\s*+("(?:\\.|[^\\"])++"|[^,]*+)(?:,|$)')
"""A1111's own pattern for one `Key: value` of the settings line (a value may be quoted),
made linear. A1111's (`A1111_SETTING` in tests/test_parsers_fuzz.py) tries every position of a
run of key characters, each scanning to the run's end: quadratic, minutes for one long line
without a colon. A key can only end where its run ends, so this one starts only at a run's
first word character (the look-behind) and never gives back what a possessive quantifier
took; `findall` finds exactly A1111's pairs (the tests compare both)."""


SIZE = re.compile(r"\d{1,6}x\d{1,6}")
"""A `Size` setting sdsite reads (longer numbers are no size: `int()` refuses past 4,300
digits)."""

TEXT_LIMIT = 1024 * 1024
"""The longest metadata text (one PNG text chunk) PNG info reads, in characters: Pillow's own
bound for a compressed chunk (`PngImagePlugin.MAX_TEXT_CHUNK`, 1 MiB), here for uncompressed
ones too. Past it the image is refused (MetadataTooLarge, a 4xx): every parser here is linear,
so a text within it is read in well under a second."""

SD_PARSERS_LIMITS = {"parameters": 8 * 1024, "Dream": 1024, "Source": 1024}
"""The longest texts handed to sd-parsers (0.6) under the keys it reads with regular
expressions that backtrack quadratically on hostile text (A1111's `Hashes:`, legacy InvokeAI's
`Dream`, NovelAI's `Source`): at these lengths its worst case is a few tens of milliseconds.
A longer one is left out, as if the image did not carry it (sdsite's own A1111 reader takes
any text with `Steps: ` up to TEXT_LIMIT)."""


def for_sd_parsers(image, texts: dict[str, str]):
    """What sd-parsers reads of `image`: a stand-in PNG carrying its texts within
    SD_PARSERS_LIMITS (JPEG and WebP: A1111's EXIF UserComment as `parameters`, where sd-parsers
    reads it), so no text of the upload reaches its quadratic paths unbounded."""
    texts = dict(texts)
    if image.format in ("JPEG", "WEBP") and A1111_KEY not in texts:
        # sd-parsers' own reader of it caches by `id(image)`, which a later image may reuse.
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        if isinstance(comment, bytes) and len(comment) > 8:
            with contextlib.suppress(UnicodeDecodeError):
                texts[A1111_KEY] = comment[8:].decode("utf_16_be")
    stand_in = Image.new("L", (1, 1))
    stand_in.format = "PNG"
    stand_in.info = {
        key: value
        for key, value in texts.items()
        if len(value) <= SD_PARSERS_LIMITS.get(key, TEXT_LIMIT)
    }
    return stand_in


def unquote(text: str) -> str:
    if text.startswith('"') and text.endswith('"'):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return text


def parse_a1111(text: str) -> dict:
    """Read A1111 `parameters` text back: prompt, negative prompt and the settings."""
    *prompt_lines, settings_line = text.split("\n")
    negative = ""
    for index, line in enumerate(prompt_lines):
        if line.startswith("Negative prompt: "):
            negative = "\n".join(prompt_lines[index:])[len("Negative prompt: ") :]
            prompt_lines = prompt_lines[:index]
            break
    settings = {
        key.strip(): unquote(value.strip()) for key, value in SETTING.findall(settings_line)
    }
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": negative, **settings}


def from_a1111_text(text: str) -> dict:
    """sdsite's parameters from A1111 `parameters` text (those it names; others left out)."""
    from .pipelines.schedulers import SCHEDULE_TYPES_SETTINGS, from_a1111

    read = parse_a1111(text)
    found = {"prompt": read.pop("prompt"), "negative_prompt": read.pop("negative_prompt")}
    for parameter in PARAMETERS:
        value = read.get(parameter.a1111) if parameter.a1111 else None
        if value is not None and parameter.number:
            with contextlib.suppress(ValueError):
                found[parameter.name] = parameter.python_type(value)
        elif value is not None and parameter.needs in ("hires", "upscale"):
            found[parameter.name] = value  # an upscaler, a sampler, a prompt: as written
    found |= hires_of(read)
    if "Sampler" in read:
        scheduler = from_a1111(read["Sampler"], read.get("Schedule type"))
        if scheduler:
            found["scheduler"] = scheduler
        if not scheduler or not scheduler.endswith(str(read.get("Schedule type"))):
            schedule_type = read.get("Schedule type")
            if schedule_type in SCHEDULE_TYPES_SETTINGS:
                found["schedule_type"] = schedule_type
    size = read.get("Size", "")
    if SIZE.fullmatch(size):
        found["width"], found["height"] = (int(side) for side in size.split("x"))
    units = [
        control_unit_of(read[f"ControlNet {index}"])
        for index in range(8)
        if isinstance(read.get(f"ControlNet {index}"), str)
    ]
    if units:
        found["controlnet"] = units
    return {k: v for k, v in found.items() if v not in ("", None)}


def hires_of(read: dict) -> dict:
    """The hires fix from A1111's settings: on where any `Hires` setting is, its size from
    `Hires resize: 320x192`, its sampler only where it is one."""
    from .pipelines.schedulers import from_a1111

    if not any(key.startswith("Hires ") for key in read):
        return {}
    found = {"enable_hr": True}
    size = read.get("Hires resize", "")
    if SIZE.fullmatch(size):
        found["hr_resize_x"], found["hr_resize_y"] = (int(side) for side in size.split("x"))
    if "Hires sampler" in read:
        found["hr_sampler_name"] = from_a1111(read["Hires sampler"], None) or ""
    return found


class MetadataTooLarge(ValueError):
    """An image's metadata text is longer than TEXT_LIMIT: refused before any parser reads it."""

    def __init__(self, key: str, length: int):
        super().__init__(
            f"The image's {key!r} metadata is {length:,} characters long; "
            f"at most {TEXT_LIMIT:,} are read."
        )


def metadata_texts(image) -> dict[str, str]:
    """The image's metadata texts by key (PNG text chunks), each at most TEXT_LIMIT
    characters long, else MetadataTooLarge."""
    texts = {key: value for key, value in image.info.items() if isinstance(value, str)}
    for key, value in texts.items():
        if len(value) > TEXT_LIMIT:
            raise MetadataTooLarge(str(key)[:80], len(value))
    return texts


def read_parameters(image) -> tuple[str, dict]:
    """(source, parameters): the generation parameters an image carries, by sdsite's names.

    sdsite's own chunk first; then A1111, ComfyUI, InvokeAI, Fooocus and others
    through sd-parsers. ("", {}) for an image without any; MetadataTooLarge for one
    whose metadata text is past TEXT_LIMIT. Linear in the metadata's size.
    """
    from .params import BY_A1111_API, BY_NAME
    from .pipelines.schedulers import from_a1111

    texts = metadata_texts(image)
    own = texts.get(SDSITE_KEY)
    if own:
        try:
            values = json.loads(own)
        except (ValueError, RecursionError):  # deeply nested JSON is no settings either
            values = None
        if isinstance(values, dict):
            return "sdsite", {k: v for k, v in values.items() if k in BY_NAME}
    a1111 = texts.get(A1111_KEY)
    if a1111 is not None and "Steps: " in a1111:
        # A1111's own rule for its text: sd-parsers (0.6) splits the settings at every
        # comma, so a quoted value ("my model, v2") would come back in pieces.
        return "automatic1111", from_a1111_text(a1111)
    from sd_parsers import ParserManager

    try:
        info = ParserManager().parse(for_sd_parsers(image, texts))
    except Exception:  # a reader's failure is "no settings", never an error
        info = None
    if info is None or not (info.samplers or info.full_prompt):
        return "", {}
    found = {"prompt": info.full_prompt, "negative_prompt": info.full_negative_prompt}
    if info.samplers:
        sampler = info.samplers[0]
        schedule_type = info.metadata.get("Schedule type") or sampler.parameters.get("scheduler")
        scheduler = from_a1111(sampler.name, str(schedule_type) if schedule_type else None)
        if scheduler:
            found["scheduler"] = scheduler
        for key, value in sampler.parameters.items():
            known = BY_A1111_API.get(key)
            if known is not None and known.number:
                with contextlib.suppress(TypeError, ValueError):
                    found[known.name] = known.python_type(value)
    size = str(info.metadata.get("Size", ""))
    if SIZE.fullmatch(size):
        found["width"], found["height"] = (int(side) for side in size.split("x"))
    return info.generator.name.lower(), {k: v for k, v in found.items() if v not in ("", None)}
