"""The generation parameters, each defined once: name, type, bounds, default, help, A1111 name.

Everything else derives from this list: the model's fields take their
validators, defaults and help text from it, the form (and so the page) renders
its fields, the worker's `GenerationRequest` is built from a session's values
of the parameters marked `request`, and the PNG metadata, the admin, the
history and the `generate` command iterate it.
"""

import json
from dataclasses import dataclass

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator

from .pipelines.controlnet import CONTROL_MODES
from .pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULE_TYPE_CHOICES, SCHEDULER_CHOICES
from .pipelines.sources import text_encoder_depth
from .pipelines.upscalers import hires_size

MAX_SEED = 2**32 - 1

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
"""A1111's resize modes, for an input image of another size than the output."""
INPAINTING_FILLS = ("original", "fill", "latent noise")
"""A1111's "masked content": what the masked area starts from."""


def multiple_of_8(value: int) -> None:
    if value % 8:
        raise ValidationError("Must be a multiple of 8.", code="multiple_of_8")


def above_zero(value: float) -> None:
    if value <= 0:
        raise ValidationError("Must be greater than 0.", code="min_value")


class UnitsField(forms.Field):
    """A list of objects (ControlNet's units): a JSON list, or its text in a form post;
    each unit is checked by the spec in the form's `clean_controlnet`."""

    def to_python(self, value):
        if value in (None, "", []):
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ValidationError("Must be a JSON list of units.", code="invalid") from None
        if not isinstance(value, list):
            raise ValidationError("Must be a list of units.", code="invalid")
        return value


@dataclass(frozen=True)
class Kind:
    """What a parameter's `kind` means, wherever a value of it is read or shown."""

    python_type: type
    """Its values in Python (the model, the request, the CLI's options)."""
    json_types: tuple
    """The JSON values a body may carry for it (a float field takes `7` too)."""
    json_name: str
    """The JSON type in the words of the API's messages ("Must be an integer.")."""
    form_field: type
    """The Django form field that reads it (the form, and so the page)."""
    number: bool = False
    """Read from A1111's infotext (`Steps: 20`) and parsers' settings as a number."""


KINDS = {
    "text": Kind(str, (str,), "a string", forms.CharField),
    "choice": Kind(str, (str,), "a string", forms.ChoiceField),
    "int": Kind(int, (int,), "an integer", forms.IntegerField, number=True),
    "float": Kind(float, (int, float), "a number", forms.FloatField, number=True),
    "bool": Kind(bool, (bool,), "true or false", forms.BooleanField),
    "units": Kind(list, (list,), "a list of objects", UnitsField),
}


@dataclass(frozen=True)
class Parameter:
    name: str
    label: str
    kind: str
    """`text`, `int`, `float`, `choice`, `bool` or `units` (a list of objects whose fields
    are the parameters in `fields`: ControlNet's units): a key of KINDS."""
    help: str = ""
    default: object = None
    """None: required (the prompt) or decided when the session is made (size, seed, model)."""
    minimum: float | None = None
    maximum: float | None = None
    above_zero: bool = False
    """Exclusive lower bound 0 (strength)."""
    step: float | None = None
    """The page's input step; for integers also a rule (sizes are multiples of 8)."""
    max_length: int | None = None
    choices: tuple = ()
    """(value, label) pairs; the model and backend lists come from settings instead."""
    a1111: str = ""
    """The key in A1111's infotext ("CFG scale"); empty where A1111 writes none."""
    a1111_api: str = ""
    """The field in A1111's API (`cfg_scale`), which sd-parsers also reads; empty: none."""
    group: str = "advanced"
    """Where the page shows it: `prompt`, `advanced`, `image` (image-to-image, inpainting),
    `hires` (the hires fix) or `extras` (an upscale job's)."""
    needs: str = ""
    """`image`, `mask`, `hires` or `upscale`: it means something only with an input image,
    a mask, the hires fix on, or in an upscale job."""
    request: bool = True
    """Whether the pipeline gets it (the model and backend choose the pipeline instead)."""
    cli: str = ""
    """A short flag for `manage.py generate` besides `--name-with-dashes`."""
    per_image: bool = False
    """Whether jobs batched into one pipeline call (SD_WORKER_BATCH) may differ in it: their
    prompts and seeds. They agree on every other parameter."""
    column: bool = False
    """Stored in a column of its own, because queries, the admin's filters or its search read
    it; the others live in the session's `parameters` JSON, checked against this spec."""
    family_defaults: tuple = ()
    """(marker, value) pairs: the default of a model family that needs another one (a
    distilled model's few steps): the marker is its scheduler class or a word of its name."""
    a1111_override: str = ""
    """The key of A1111's `override_settings` that sets it (`CLIP_stop_at_last_layers`)."""
    a1111_omit_default: bool = False
    """Whether A1111 leaves it out of the infotext at its default (`Clip skip: 1`)."""
    backends: tuple = ()
    """The backends that can apply it at other values than its default; empty: all."""
    model_maximum: object = None
    """A function of the model's name giving a tighter maximum, or None where it cannot tell
    (the text encoder's depth for the clip skip)."""
    fields: tuple = ()
    """For `units`: the parameters of one unit (their `a1111_api`: the A1111 unit's field,
    `a1111`: its label in the unit's infotext)."""
    max_items: int | None = None
    """For `units`: the most units."""

    def validators(self) -> list:
        found = []
        if self.minimum is not None:
            found.append(MinValueValidator(self.minimum))
        if self.maximum is not None:
            found.append(MaxValueValidator(self.maximum))
        if self.above_zero:
            found.append(above_zero)
        if self.kind == "int" and self.step == 8:
            found.append(multiple_of_8)
        if self.max_length is not None:
            found.append(MaxLengthValidator(self.max_length))
        return found

    @property
    def python_type(self) -> type:
        """The Python type of its values (choices and texts are strings)."""
        return KINDS[self.kind].python_type

    @property
    def number(self) -> bool:
        return KINDS[self.kind].number

    def clean(self, value):
        """The value, checked against the spec: ValidationError naming what is wrong."""
        if self.kind == "units":
            return self.clean_units(value)
        if self.kind == "float" and value is None and self.default is None:
            return value  # an optional number (a preprocessor's threshold)
        if isinstance(value, bool) != (self.kind == "bool") or not isinstance(
            value, KINDS[self.kind].json_types
        ):
            raise ValidationError(f"{self.name}: must be {self.kind}.", code="invalid")
        if self.choices and value not in dict(self.choices):
            raise ValidationError(f"{self.name}: {value!r} is no choice.", code="invalid_choice")
        for validator in self.validators():
            validator(value)
        return value

    def clean_units(self, value) -> list:
        """A list of units, each an object of `fields` (the missing ones at their defaults),
        checked: ValidationError naming the unit and its field."""
        if not isinstance(value, list | tuple):
            raise ValidationError(f"{self.name}: must be a list of units.", code="invalid")
        if self.max_items is not None and len(value) > self.max_items:
            raise ValidationError(
                f"{self.name}: at most {self.max_items} units.", code="max_length"
            )
        by_name = {unit_field.name: unit_field for unit_field in self.fields}
        cleaned = []
        for index, unit in enumerate(value):
            if not isinstance(unit, dict):
                raise ValidationError(f"{self.name}[{index}]: must be an object.", code="invalid")
            unknown = sorted(set(unit) - set(by_name))
            if unknown:
                raise ValidationError(
                    f"{self.name}[{index}]: {unknown[0]!r} is no field of a unit.", code="invalid"
                )
            values = {}
            for name, unit_field in by_name.items():
                given = unit.get(name, unit_field.default)
                if given is None and unit_field.default is None and unit_field.kind != "float":
                    raise ValidationError(
                        f"{self.name}[{index}].{name}: required.", code="required"
                    )
                try:
                    values[name] = unit_field.clean(given)
                except ValidationError as error:
                    raise ValidationError(
                        f"{self.name}[{index}].{error.messages[0]}", code=error.code
                    ) from None
            cleaned.append(values)
        return cleaned

    def model_options(self) -> dict:
        """The keyword arguments of the model field that stores it."""
        options = {"verbose_name": self.label.lower(), "help_text": self.help}
        if self.validators():
            options["validators"] = self.validators()
        if self.default is not None:
            options["default"] = self.default
        if self.choices:
            options["choices"] = list(self.choices)
        return options


CONTROL_UNIT: tuple[Parameter, ...] = (
    Parameter(
        "image",
        "Control image",
        "text",
        help="The picture the unit follows, as stored with the job (inputs/...png).",
        default="",
        max_length=200,
    ),
    Parameter("module", "Preprocessor", "text", default="none", max_length=100, a1111="Module",
              a1111_api="module"),
    Parameter("model", "Model", "text", max_length=500, a1111="Model", a1111_api="model"),
    Parameter("weight", "Weight", "float", default=1.0, minimum=0, maximum=2, step=0.05,
              a1111="Weight", a1111_api="weight"),
    Parameter(
        "resize_mode",
        "Resize mode",
        "choice",
        default=RESIZE_MODES[1],
        choices=tuple((mode, mode.capitalize()) for mode in RESIZE_MODES),
        a1111="Resize Mode",
        a1111_api="resize_mode",
    ),
    Parameter("processor_res", "Processor resolution", "int", default=512, minimum=64,
              maximum=2048, a1111="Processor Res", a1111_api="processor_res"),
    Parameter("threshold_a", "Threshold A", "float", minimum=0, maximum=1024,
              a1111="Threshold A", a1111_api="threshold_a"),
    Parameter("threshold_b", "Threshold B", "float", minimum=0, maximum=1024,
              a1111="Threshold B", a1111_api="threshold_b"),
    Parameter("guidance_start", "Guidance start", "float", default=0.0, minimum=0, maximum=1,
              step=0.05, a1111="Guidance Start", a1111_api="guidance_start"),
    Parameter("guidance_end", "Guidance end", "float", default=1.0, minimum=0, maximum=1,
              step=0.05, a1111="Guidance End", a1111_api="guidance_end"),
    Parameter("pixel_perfect", "Pixel perfect", "bool", default=False, a1111="Pixel Perfect",
              a1111_api="pixel_perfect"),
    Parameter(
        "control_mode",
        "Control mode",
        "choice",
        default=CONTROL_MODES[0],
        choices=tuple((mode, mode) for mode in CONTROL_MODES),
        a1111="Control Mode",
        a1111_api="control_mode",
    ),
)  # fmt: skip
"""The fields of one ControlNet unit, in the order sd-webui-controlnet's infotext lists them."""
CONTROL_RESIZE_LABELS = {
    "just resize": "Just Resize",
    "crop and resize": "Crop and Resize",
    "resize and fill": "Resize and Fill",
}
"""sd-webui-controlnet's names of the resize modes (its API and infotext)."""


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "prompt",
        "Prompt",
        "text",
        help="What to draw.",
        max_length=1000,
        group="prompt",
        a1111_api="prompt",
        per_image=True,
        column=True,
    ),
    Parameter(
        "negative_prompt",
        "Negative prompt",
        "text",
        help="What to keep out of the image.",
        default="",
        max_length=1000,
        a1111="Negative prompt",
        group="prompt",
        cli="--negative",
        a1111_api="negative_prompt",
        per_image=True,
        column=True,
    ),
    Parameter(
        "steps",
        "Steps",
        "int",
        help="Denoising steps.",
        default=20,
        minimum=1,
        maximum=150,
        a1111="Steps",
        a1111_api="steps",
        family_defaults=(("turbo", 1), ("lightning", 4), ("LCMScheduler", 4)),
    ),
    Parameter(
        "scheduler",
        "Sampler",
        "choice",
        help="The sampler, by its A1111 name.",
        default=DEFAULT_SCHEDULER,
        choices=tuple(SCHEDULER_CHOICES),
        a1111="Sampler",
    ),
    Parameter(
        "schedule_type",
        "Schedule type",
        "choice",
        help="How the sampler spaces its noise levels (A1111's schedule type).",
        default=SCHEDULE_TYPE_CHOICES[0][0],
        choices=tuple(SCHEDULE_TYPE_CHOICES),
        a1111="Schedule type",
        a1111_api="scheduler",
    ),
    Parameter(
        "guidance_scale",
        "Guidance scale",
        "float",
        help="How closely to follow the prompt (CFG scale).",
        default=7.5,
        minimum=0,
        maximum=30,
        step=0.5,
        a1111="CFG scale",
        cli="--cfg",
        a1111_api="cfg_scale",
        family_defaults=(("turbo", 0.0), ("lightning", 0.0), ("LCMScheduler", 1.0)),
    ),
    Parameter(
        "seed",
        "Seed",
        "int",
        help="The same seed and settings give the same image (default: random).",
        minimum=0,
        maximum=MAX_SEED,
        a1111="Seed",
        a1111_api="seed",
        per_image=True,
        column=True,
    ),
    Parameter(
        "width",
        "Width",
        "int",
        help="Pixels, a multiple of 8 (default: the model's size, or the input image's).",
        minimum=64,
        maximum=2048,
        step=8,
        a1111_api="width",
        column=True,
    ),
    Parameter(
        "height",
        "Height",
        "int",
        help="Pixels, a multiple of 8 (default: the model's size, or the input image's).",
        minimum=64,
        maximum=2048,
        step=8,
        a1111_api="height",
        column=True,
    ),
    Parameter(
        "model",
        "Model",
        "choice",
        help="One of SD_MODELS (default: SD_MODEL).",
        a1111="Model",
        request=False,
        column=True,
    ),
    Parameter(
        "sd_vae",
        "VAE",
        "choice",
        help="The VAE that turns latents into the picture: a file of the VAE folder, "
        "Automatic (the file named like the checkpoint, else its own) or None (its own).",
        default="Automatic",
        a1111="VAE",
        a1111_override="sd_vae",
        backends=("pytorch",),
    ),
    Parameter(
        "backend",
        "Backend",
        "choice",
        help="pytorch or openvino (default: SD_BACKEND).",
        a1111="Backend",
        request=False,
        column=True,
    ),
    Parameter(
        "strength",
        "Denoising strength",
        "float",
        help="With an input image: how much to change it (1: entirely).",
        default=0.75,
        maximum=1,
        above_zero=True,
        step=0.05,
        a1111="Denoising strength",
        group="image",
        needs="image",
        a1111_api="denoising_strength",
    ),
    Parameter(
        "resize_mode",
        "Resize mode",
        "choice",
        help="With an input image of another size: how to fit it.",
        default=RESIZE_MODES[0],
        choices=tuple((mode, mode.capitalize()) for mode in RESIZE_MODES),
        group="image",
        needs="image",
    ),
    Parameter(
        "mask_blur",
        "Mask blur",
        "int",
        help="Inpainting: pixels of blur at the mask's edge.",
        default=4,
        minimum=0,
        maximum=64,
        a1111="Mask blur",
        group="image",
        needs="mask",
        a1111_api="mask_blur",
    ),
    Parameter(
        "inpainting_fill",
        "Masked content",
        "choice",
        help="Inpainting: what the masked area starts from.",
        default=INPAINTING_FILLS[0],
        choices=tuple((fill, fill.capitalize()) for fill in INPAINTING_FILLS),
        group="image",
        needs="mask",
    ),
    Parameter(
        "clip_skip",
        "Clip skip",
        "int",
        help="Condition on a text encoder layer this far from its last (1: the last).",
        default=1,
        minimum=1,
        maximum=12,
        a1111="Clip skip",
        a1111_override="CLIP_stop_at_last_layers",
        a1111_omit_default=True,
        backends=("pytorch",),
        model_maximum=text_encoder_depth,
    ),
    # A1111's hires fix: generate, upscale, then an image-to-image pass of the upscaled
    # picture (at `strength`, A1111's denoising_strength, 0.7 unless given).
    Parameter(
        "enable_hr",
        "Hires fix",
        "bool",
        help="Text to image: upscale the picture, then refine it with a second pass.",
        default=False,
        group="hires",
        a1111_api="enable_hr",
        backends=("pytorch",),
    ),
    Parameter(
        "hr_scale",
        "Upscale by",
        "float",
        help="The hires size: this many times the first pass's (unless resized to a size).",
        default=2.0,
        minimum=1,
        maximum=4,
        step=0.05,
        a1111="Hires upscale",
        group="hires",
        needs="hires",
        a1111_api="hr_scale",
    ),
    Parameter(
        "hr_resize_x",
        "Resize width to",
        "int",
        help="The hires width in pixels (0: by the scale, or in proportion to the height).",
        default=0,
        minimum=0,
        maximum=4096,
        group="hires",
        needs="hires",
        a1111_api="hr_resize_x",
    ),
    Parameter(
        "hr_resize_y",
        "Resize height to",
        "int",
        help="The hires height in pixels (0: by the scale, or in proportion to the width).",
        default=0,
        minimum=0,
        maximum=4096,
        group="hires",
        needs="hires",
        a1111_api="hr_resize_y",
    ),
    Parameter(
        "hr_second_pass_steps",
        "Hires steps",
        "int",
        help="Steps of the second pass, whatever the strength (0: the first pass's).",
        default=0,
        minimum=0,
        maximum=150,
        a1111="Hires steps",
        a1111_omit_default=True,
        group="hires",
        needs="hires",
        a1111_api="hr_second_pass_steps",
    ),
    Parameter(
        "hr_upscaler",
        "Upscaler",
        "choice",
        help="How the first pass is enlarged: a latent mode, Lanczos, or an upscaler model.",
        default="Latent",
        a1111="Hires upscaler",
        group="hires",
        needs="hires",
        a1111_api="hr_upscaler",
    ),
    Parameter(
        "hr_sampler_name",
        "Hires sampler",
        "choice",
        help="The second pass's sampler (blank: the first pass's).",
        default="",
        choices=(("", "Same as the first pass"), *SCHEDULER_CHOICES),
        a1111="Hires sampler",
        a1111_omit_default=True,
        group="hires",
        needs="hires",
        a1111_api="hr_sampler_name",
    ),
    Parameter(
        "hr_prompt",
        "Hires prompt",
        "text",
        help="The second pass's prompt (blank: the prompt).",
        default="",
        max_length=1000,
        a1111="Hires prompt",
        a1111_omit_default=True,
        group="hires",
        needs="hires",
        a1111_api="hr_prompt",
    ),
    Parameter(
        "hr_negative_prompt",
        "Hires negative prompt",
        "text",
        help="The second pass's negative prompt (blank: the negative prompt).",
        default="",
        max_length=1000,
        a1111="Hires negative prompt",
        a1111_omit_default=True,
        group="hires",
        needs="hires",
        a1111_api="hr_negative_prompt",
    ),
    # An upscale job (A1111's Extras): the input image upscaled, no model run.
    Parameter(
        "job",
        "Job",
        "choice",
        help="generate, or upscale the input image (A1111's Extras).",
        default="generate",
        choices=(("generate", "Generate"), ("upscale", "Upscale")),
        group="extras",
    ),
    Parameter(
        "upscaler_1",
        "Upscaler",
        "choice",
        help="Upscale job: the upscaler (None: none).",
        default="None",
        a1111="Postprocess upscaler",
        group="extras",
        needs="upscale",
        a1111_api="upscaler_1",
    ),
    Parameter(
        "upscaler_2",
        "Second upscaler",
        "choice",
        help="Upscale job: a second upscaler blended over the first (None: none).",
        default="None",
        a1111="Postprocess upscaler 2",
        a1111_omit_default=True,
        group="extras",
        needs="upscale",
        a1111_api="upscaler_2",
    ),
    Parameter(
        "extras_upscaler_2_visibility",
        "Second upscaler visibility",
        "float",
        help="Upscale job: how much of the second upscaler's picture shows (0 to 1).",
        default=0.0,
        minimum=0,
        maximum=1,
        step=0.05,
        group="extras",
        needs="upscale",
        a1111_api="extras_upscaler_2_visibility",
    ),
    Parameter(
        "upscaling_resize",
        "Upscale by",
        "float",
        help="Upscale job: this many times the image's size (unless a size is given).",
        default=2.0,
        minimum=1,
        maximum=8,
        step=0.05,
        a1111="Postprocess upscale by",
        group="extras",
        needs="upscale",
        a1111_api="upscaling_resize",
    ),
    Parameter(
        "upscaling_resize_w",
        "Upscale to width",
        "int",
        help="Upscale job: the width in pixels (0: by the scale, or in proportion).",
        default=0,
        minimum=0,
        maximum=8192,
        group="extras",
        needs="upscale",
        a1111_api="upscaling_resize_w",
    ),
    Parameter(
        "upscaling_resize_h",
        "Upscale to height",
        "int",
        help="Upscale job: the height in pixels (0: by the scale, or in proportion).",
        default=0,
        minimum=0,
        maximum=8192,
        group="extras",
        needs="upscale",
        a1111_api="upscaling_resize_h",
    ),
    Parameter(
        "controlnet",
        "ControlNet",
        "units",
        help="ControlNet units: each a control image, its preprocessor, model and weight.",
        fields=CONTROL_UNIT,
        max_items=4,
        group="controlnet",
        backends=("pytorch",),
    ),
)

BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}
NAMES = tuple(BY_NAME)
REQUEST_NAMES = tuple(p.name for p in PARAMETERS if p.request)
IMAGE_ONLY = tuple(p.name for p in PARAMETERS if p.needs in ("image", "mask"))
"""Parameters that mean something only with an input image."""
MASK_ONLY = tuple(p.name for p in PARAMETERS if p.needs == "mask")
HIRES_ONLY = tuple(p.name for p in PARAMETERS if p.needs == "hires")
UPSCALE_ONLY = tuple(p.name for p in PARAMETERS if p.needs == "upscale")
HIRES_STRENGTH = 0.7
"""The hires fix's denoising strength unless one is given (A1111's)."""
UPSCALE_JOB_KEEPS = ("prompt", "model", "backend")
"""What an upscale job keeps of the generation parameters besides its own."""
BATCH_KEY = tuple(p.name for p in PARAMETERS if not p.per_image)
"""What jobs must agree on to share one pipeline call (SD_WORKER_BATCH)."""


BY_A1111_API = {p.a1111_api: p for p in PARAMETERS if p.a1111_api}
BY_A1111_OVERRIDE = {p.a1111_override: p for p in PARAMETERS if p.a1111_override}
COLUMNS = tuple(p.name for p in PARAMETERS if p.column)
"""The parameters stored in columns of their own; the rest are in `parameters` (JSON)."""
IN_JSON = tuple(p for p in PARAMETERS if not p.column)
FAMILY_MARKERS = tuple(dict.fromkeys(m for p in PARAMETERS for m, _ in p.family_defaults))
"""What tells a model family with defaults of its own: "turbo", "LCMScheduler"..."""


def family_defaults(marker: str) -> dict:
    """{parameter: default} of the model family `marker` names."""
    return {
        p.name: dict(p.family_defaults)[marker]
        for p in PARAMETERS
        if marker in dict(p.family_defaults)
    }


def check_json(values: dict) -> None:
    """A session's `parameters` JSON: only the spec's JSON-stored names, each valid."""
    if not isinstance(values, dict):
        raise ValidationError("Must be an object.", code="invalid")
    for name, value in values.items():
        if name not in BY_NAME or BY_NAME[name].column:
            raise ValidationError(f"{name!r} is no parameter stored here.", code="invalid")
        BY_NAME[name].clean(value)


def parameter(name: str) -> Parameter:
    return BY_NAME[name]


def steps_to_run(
    steps: int, strength: float, *, image: bool, mask: bool, inpainting_fill: str
) -> int:
    """How many steps a job runs. From an image diffusers skips the first (1 - strength) of
    them; from text, or inpainting from latent noise (strength 1), it runs them all."""
    if not image or (mask and inpainting_fill == "latent noise"):
        return steps
    return min(int(steps * strength), steps)


def unused(*, image: bool, mask: bool, hires: bool, upscale: bool) -> tuple[str, ...]:
    """The parameters that mean nothing for such a job (left out of what it stores and
    describes): image settings without an image, mask settings without a mask, the hires
    fix's when it is off (its denoising strength is `strength`), and in an upscale job
    everything but its own and UPSCALE_JOB_KEEPS."""
    if upscale:
        return tuple(
            name for name in NAMES if name not in UPSCALE_ONLY + UPSCALE_JOB_KEEPS + ("job",)
        )
    left_out = list(UPSCALE_ONLY)
    if not hires:
        left_out += HIRES_ONLY
    if not image:
        left_out += [name for name in IMAGE_ONLY if not (hires and name == "strength")]
    elif not mask:
        left_out += MASK_ONLY
    return tuple(left_out)


def hires_plan(values: dict) -> tuple[tuple[int, int], int]:
    """((width, height) of the second pass, its steps) of a job's values (defaults for
    those absent): A1111's size, and `hr_second_pass_steps`, 0 meaning the first's."""
    get = lambda name: values.get(name, BY_NAME[name].default)  # noqa: E731
    size = hires_size(
        values["width"], values["height"], get("hr_scale"), get("hr_resize_x"), get("hr_resize_y")
    )
    return size, get("hr_second_pass_steps") or get("steps")
