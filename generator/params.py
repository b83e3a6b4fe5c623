"""The generation parameters, each defined once: name, type, bounds, default, help, A1111 name.

Everything else derives from this list: the model's fields take their
validators, defaults and help text from it, the form (and so the page) renders
its fields, the worker's `GenerationRequest` is built from a session's values
of the parameters marked `request`, and the PNG metadata, the admin, the
history and the `generate` command iterate it.
"""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator

from .pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULE_TYPE_CHOICES, SCHEDULER_CHOICES
from .pipelines.sources import text_encoder_depth

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


@dataclass(frozen=True)
class Parameter:
    name: str
    label: str
    kind: str
    """`text`, `int`, `float` or `choice`."""
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
    """Where the page shows it: `prompt`, `advanced` or `image` (image-to-image, inpainting)."""
    needs: str = ""
    """`image` or `mask`: it means something only with an input image, or a mask."""
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
        return PYTHON_TYPES[self.kind]

    def clean(self, value):
        """The value, checked against the spec: ValidationError naming what is wrong."""
        wanted = (int, float) if self.kind == "float" else self.python_type
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ValidationError(f"{self.name}: must be {self.kind}.", code="invalid")
        if self.choices and value not in dict(self.choices):
            raise ValidationError(f"{self.name}: {value!r} is no choice.", code="invalid_choice")
        for validator in self.validators():
            validator(value)
        return value

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


PYTHON_TYPES = {"text": str, "choice": str, "int": int, "float": float}


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
)

BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}
NAMES = tuple(BY_NAME)
REQUEST_NAMES = tuple(p.name for p in PARAMETERS if p.request)
IMAGE_ONLY = tuple(p.name for p in PARAMETERS if p.needs)
"""Parameters that mean something only with an input image."""
MASK_ONLY = tuple(p.name for p in PARAMETERS if p.needs == "mask")
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
