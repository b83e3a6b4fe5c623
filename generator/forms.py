"""The generation form, built from the parameter spec, plus the image inputs and the count."""

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .images import base64_upload, output_size, read_upload
from .models import Backend
from .params import (
    BY_NAME,
    HIRES_STRENGTH,
    KINDS,
    PARAMETERS,
    Parameter,
    UnitsField,
    hires_plan,
    steps_to_run,
    unused,
)
from .pipelines.checkpoints import model_choices, offered_models
from .pipelines.loras import UnknownLora, loras_of
from .pipelines.schedulers import family_samplers, model_scheduler_class, schedule_type_problem
from .pipelines.sources import local_folder
from .pipelines.upscalers import available as available_upscalers
from .pipelines.upscalers import problem_of as upscaler_problem
from .pipelines.upscalers import target_size
from .pipelines.vaes import choices as vae_choices
from .prompts import weight_problem
from .services import default_size
from .webhooks import check_callback_url

UPSCALER_FIELDS = {"hr_upscaler": True, "upscaler_1": False, "upscaler_2": False}
"""The fields naming an upscaler: {field: whether a latent mode is one}."""


def form_field(parameter: Parameter) -> forms.Field:
    """The form field of one parameter: blank optional fields take the defaults."""
    if parameter.kind == "units":
        return UnitsField(label=parameter.label, help_text=parameter.help, required=False)
    options = {
        "label": parameter.label,
        "help_text": parameter.help,
        "required": False,  # the prompt: checked in `clean` (an upscale job needs none)
        "validators": parameter.validators(),
        "initial": parameter.default,
    }
    attrs = {}
    if parameter.kind == "text":
        options["max_length"] = parameter.max_length
        attrs = {"rows": 3 if parameter.name == "prompt" else 2}
        if parameter.name == "prompt":
            attrs["placeholder"] = "a lighthouse at dawn, oil painting"
        options["widget"] = forms.Textarea(attrs=attrs)
    elif parameter.kind == "bool":
        options.pop("validators")
    elif parameter.name in UPSCALER_FIELDS:
        # The upscalers are the folders' files: `clean` checks the name, naming it.
        options["widget"] = forms.Select()
        options["max_length"] = 200
        return forms.CharField(**options)
    elif parameter.kind == "choice":
        options["choices"] = parameter.choices
    else:
        for key, value in (("min", parameter.minimum), ("max", parameter.maximum)):
            if value is not None:
                attrs[key] = value
        attrs["step"] = parameter.step or (1 if parameter.kind == "int" else "any")
        if parameter.name == "seed":
            attrs["placeholder"] = "random"
        options["widget"] = forms.NumberInput(attrs=attrs)
    return KINDS[parameter.kind].form_field(**options)


class GenerateForm(forms.Form):
    """The parameters of POST /api/generate, the page's form and the CLI's options."""

    init_image = forms.FileField(
        required=False,
        label="Start from an image",
        help_text="PNG, JPEG or WebP: image-to-image, or inpainting with a mask.",
    )
    mask_image = forms.FileField(
        required=False, label="Mask", help_text="White: repaint; black: keep."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for parameter in PARAMETERS:
            self.fields[parameter.name] = form_field(parameter)
        models = offered_models()  # SD_MODELS, then the checkpoints folder's
        self.fields["model"].choices = model_choices()
        self.fields["model"].initial = settings.SD_MODEL
        self.fields["sd_vae"].choices = vae_choices()  # as A1111: Automatic, None, the files
        self.fields["sd_vae"].error_messages["invalid_choice"] = (
            "No usable VAE named %(value)s: GET /sdapi/v1/sd-vae lists them."
        )
        # The page offers the samplers of the served models' families (SD's for SD 1.x
        # and SDXL, flow samplers for SD3 and Flux, LCM); `clean` checks the pair.
        offered = {}
        for model in models:
            folder = local_folder(model)
            offered |= family_samplers(model_scheduler_class(str(folder) if folder else None))
        self.fields["scheduler"].widget.choices = [(name, name) for name in offered]
        for name, latent in UPSCALER_FIELDS.items():
            self.fields[name].widget.choices = [
                (each.name, each.name) for each in available_upscalers(latent) if not each.problem
            ]
        self.fields["backend"].choices = Backend.choices
        self.fields["backend"].initial = settings.SD_BACKEND
        self.fields["count"] = forms.IntegerField(
            required=False,
            min_value=1,
            max_value=settings.SD_MAX_COUNT,
            label="Images",
            help_text="How many images, with seeds seed, seed+1, ...",
        )
        self.fields["callback_url"] = forms.URLField(
            required=False,
            max_length=2000,
            assume_scheme="https",
            help_text="Where to POST the result when the job ends (a webhook).",
        )
        self.fields["init_image"].widget.attrs["accept"] = "image/png,image/jpeg,image/webp"
        self.images = {}

    @property
    def group(self) -> dict:
        """The bound fields the page shows together: {"prompt": [...], "advanced", "image"}."""
        groups = {
            "prompt": [],
            "advanced": [],
            "image": [],
            "hires": [],
            "extras": [],
            "controlnet": [],
        }
        for parameter in PARAMETERS:
            groups[parameter.group].append(self[parameter.name])
        groups["advanced"].append(self["count"])
        return groups

    def _clean_image(self, field: str, kind: str):
        upload = self.cleaned_data.get(field)
        if not upload:
            return None
        try:
            self.images[field] = read_upload(upload, kind=kind)
        except ValidationError as error:
            self.add_error(field, error)
        return upload

    def clean_callback_url(self):
        url = self.cleaned_data.get("callback_url")
        return check_callback_url(url) if url else ""

    def clean_init_image(self):
        return self._clean_image("init_image", "RGB")

    def clean_mask_image(self):
        return self._clean_image("mask_image", "L")

    def clean_controlnet(self):
        """The units, each checked by the spec, its image (base64 in `image`, or the upload
        `controlnet_image_<n>`) decoded within the upload limits and kept for the queue.
        Model and preprocessor are checked in `clean`, which knows the job's model."""
        units = self.cleaned_data.get("controlnet") or []
        parameter = BY_NAME["controlnet"]
        checked = []
        for index, unit in enumerate(units):
            unit = dict(unit) if isinstance(unit, dict) else unit
            if isinstance(unit, dict):
                given = unit.pop("image", None)
                upload = self.files.get(f"controlnet_image_{index}") if self.files else None
                if upload is None and isinstance(given, str) and given:
                    upload = base64_upload(given, f"controlnet_image_{index}")
                if upload is None:
                    raise ValidationError(f"controlnet[{index}].image: send the control image.")
                try:
                    self.images[f"controlnet_{index}"] = read_upload(upload, kind="RGB")
                except ValidationError as error:
                    raise ValidationError(
                        f"controlnet[{index}].image: {error.messages[0]}", code=error.code
                    ) from None
            checked.append(unit)
        units = parameter.clean(checked)
        return units or None

    def clean(self):
        data = super().clean()
        image, mask = self.images.get("init_image"), self.images.get("mask_image")
        image_failed = "init_image" in self.errors
        if data.get("job") == "upscale":
            return self._clean_upscale(data, image, image_failed)
        if not data.get("prompt") and "prompt" not in self.errors:
            self.add_error("prompt", forms.Field.default_error_messages["required"])
        if data.get("mask_image") and not data.get("init_image") and not image_failed:
            self.add_error("mask_image", "A mask needs an image to paint on (init_image).")
        width, height = data.get("width"), data.get("height")
        self._check_pixels("width", width, height)
        if data.get("enable_hr"):
            self._check_hires(data, image)
        self._check_loras(data)
        self._check_controlnet(data)
        self._check_sampler(data)
        self._check_model_limits(data)
        if image is not None and mask is not None and image.size != mask.size:
            self.add_error(
                "mask_image",
                f"The mask is {mask.width}x{mask.height}; it must be the image's size "
                f"({image.width}x{image.height}).",
            )
        if image is not None:
            if not data.get("width") and not data.get("height") and "width" not in self.errors:
                model_size = default_size(data.get("model") or settings.SD_MODEL)
                data["width"], data["height"] = output_size(image, model_size)
            steps = data.get("steps") or BY_NAME["steps"].default
            strength = data.get("strength") or BY_NAME["strength"].default
            runs = steps_to_run(
                steps,
                strength,
                image=True,
                mask=mask is not None,
                inpainting_fill=data.get("inpainting_fill") or BY_NAME["inpainting_fill"].default,
            )
            if runs < 1:
                self.add_error(
                    "strength",
                    f"Strength {strength:g} of {steps} steps runs no step: raise either.",
                )
        return data

    def _check_pixels(self, field: str, width, height, what: str = "") -> None:
        """SD_MAX_PIXELS, of the final image."""
        if width and height and width * height > settings.SD_MAX_PIXELS:
            self.add_error(
                field,
                f"{what}{width}x{height} is {width * height:,} pixels; this server allows at "
                f"most {settings.SD_MAX_PIXELS:,} (SD_MAX_PIXELS), e.g. 1024x1024.",
            )

    def _check_upscaler(self, field: str, data: dict) -> None:
        name = data.get(field) or BY_NAME[field].default
        problem = upscaler_problem(name, latent=UPSCALER_FIELDS[field])
        if problem and field not in self.errors:
            self.add_error(field, problem)

    def _check_hires(self, data: dict, image) -> None:
        """The hires fix: text to image only, a known upscaler, a final size within
        SD_MAX_PIXELS; its strength is A1111's 0.7 unless given."""
        if image is not None or "init_image" in self.errors:
            self.add_error("enable_hr", "The hires fix is for text to image: send no init_image.")
            return
        self._check_upscaler("hr_upscaler", data)
        if data.get("strength") is None:
            data["strength"] = HIRES_STRENGTH
        if "width" in self.errors or "height" in self.errors:
            return
        values = {k: v for k, v in data.items() if k in BY_NAME and v not in (None, "")}
        side = default_size(data.get("model") or settings.SD_MODEL)
        values.setdefault("width", side)
        values.setdefault("height", side)
        (width, height), _ = hires_plan(values)
        self._check_pixels("hr_scale", width, height, "The hires size ")

    def _clean_upscale(self, data: dict, image, image_failed: bool) -> dict:
        """An upscale job: an input image, known upscalers, a final size within
        SD_MAX_PIXELS. Its prompt (shown in the history) says what it is, unless given."""
        if image is None:
            if not image_failed:
                self.add_error("init_image", "An upscale job needs an image (init_image).")
            return data
        if data.get("mask_image"):
            self.add_error("mask_image", "An upscale job takes no mask.")
        for field in ("upscaler_1", "upscaler_2"):
            self._check_upscaler(field, data)
        get = lambda name: data.get(name) or BY_NAME[name].default  # noqa: E731
        size = target_size(
            image.width, image.height, get("upscaling_resize"),
            get("upscaling_resize_w"), get("upscaling_resize_h"),
        )  # fmt: skip
        self._check_pixels("upscaling_resize", *size, "The upscaled size ")
        if not data.get("prompt"):
            data["prompt"] = f"Upscale of {image.width}x{image.height}"
        return data

    def _check_sampler(self, data: dict) -> None:
        """The sampler must fit the model's family (flow-matching, LCM or SD), where the
        model is here to tell."""
        name = data.get("scheduler")
        folder = local_folder(data.get("model") or settings.SD_MODEL)
        scheduler_class = model_scheduler_class(str(folder) if folder else None)
        samplers = family_samplers(scheduler_class)
        if name and scheduler_class and name not in samplers:
            self.add_error(
                "scheduler",
                f"{name} does not fit this model (its scheduler is {scheduler_class}): "
                f"use {', '.join(samplers)}.",
            )
        schedule_type = data.get("schedule_type") or "Automatic"
        problem = schedule_type_problem(name or "", schedule_type, samplers)
        if name and problem:
            self.add_error("schedule_type", problem)

    def _check_controlnet(self, data: dict) -> None:
        """Each unit's preprocessor is one here, its model a ControlNet here that fits the
        job's model (family), on the pytorch backend."""
        from .pipelines import controlnet, preprocessors

        units = data.get("controlnet") or []
        backend = data.get("backend") or settings.SD_BACKEND
        if units and backend != Backend.PYTORCH:
            self.add_error(
                "controlnet",
                f"ControlNet runs on the PyTorch backend; the {backend} backend has none.",
            )
            return
        if units and (data.get("enable_hr") or data.get("job") == "upscale"):
            self.add_error(
                "controlnet",
                "ControlNet units apply to one generation pass: not to the hires fix's two "
                "passes nor to an upscale job (yet).",
            )
            return
        model = data.get("model") or settings.SD_MODEL
        for index, unit in enumerate(units):
            if preprocessors.find(unit["module"]) is None:
                names = ", ".join(preprocessors.available())
                self.add_error(
                    "controlnet",
                    f"controlnet[{index}].module: no preprocessor {unit['module'][:100]!r} "
                    f"here: use one of {names}.",
                )
            found = controlnet.lookup(unit["model"])
            if found is None:
                self.add_error(
                    "controlnet",
                    f"controlnet[{index}].model: no ControlNet {unit['model'][:200]!r} here "
                    "(see /controlnet/model_list).",
                )
            elif problem := controlnet.fit_problem(found, model):
                self.add_error("controlnet", f"controlnet[{index}].model: {problem}")
            else:
                unit["model"] = found.name
            if unit["guidance_start"] > unit["guidance_end"]:
                self.add_error(
                    "controlnet",
                    f"controlnet[{index}].guidance_start: after its guidance_end.",
                )

    def _check_model_limits(self, data: dict) -> None:
        """A parameter away from its default is one the chosen backend can apply
        (`Parameter.backends`) and within what the chosen model allows
        (`Parameter.model_maximum`), where the model is here to tell."""
        model = data.get("model") or settings.SD_MODEL
        backend = data.get("backend") or settings.SD_BACKEND
        for parameter in PARAMETERS:
            value = data.get(parameter.name)
            if value in (None, "") or value == parameter.default or parameter.name in self.errors:
                continue
            if parameter.kind == "units":
                continue  # checked unit by unit (`_check_controlnet`)
            if parameter.backends and backend not in parameter.backends:
                self.add_error(
                    parameter.name,
                    f"{parameter.name} {value} needs the {' or '.join(parameter.backends)} "
                    f"backend; the {backend} backend cannot apply it.",
                )
            elif parameter.model_maximum is not None:
                most = parameter.model_maximum(model)
                if most is not None and value > most:
                    self.add_error(
                        parameter.name,
                        f"{parameter.name} must be at most {most} for this model.",
                    )

    def _check_loras(self, data: dict) -> None:
        """Every `<lora:...>` of the prompts is a LoRA here, on a backend that applies them,
        and every weight of the prompts is within bounds (prompts.MAX_WEIGHT)."""
        backend = data.get("backend") or settings.SD_BACKEND
        for field in ("prompt", "negative_prompt"):
            problem = weight_problem(data.get(field) or "")
            if problem:
                self.add_error(field, problem)
                continue
            try:
                named = loras_of(data.get(field) or "")
            except UnknownLora as error:
                self.add_error(field, str(error))
                continue
            if named and backend != Backend.PYTORCH:
                self.add_error(
                    field,
                    f"LoRA ({', '.join(lora.name for lora, _ in named)}) need the pytorch "
                    f"backend; the {backend} backend cannot apply them.",
                )

    def queue_options(self) -> dict:
        """What the queue needs beyond the parameters: the count and the webhook."""
        return {
            "count": self.cleaned_data.get("count") or 1,
            "images": self.images,
            "callback_url": self.cleaned_data.get("callback_url") or "",
        }

    def parameters(self) -> dict:
        """The cleaned parameters, without the ones left blank (so defaults apply)."""
        values = {
            p.name: self.cleaned_data.get(p.name)
            for p in PARAMETERS
            if self.cleaned_data.get(p.name) not in (None, "")
        }
        values["negative_prompt"] = self.cleaned_data.get("negative_prompt", "")
        left_out = unused(
            image="init_image" in self.images,
            mask="mask_image" in self.images,
            hires=bool(values.get("enable_hr")),
            upscale=values.get("job") == "upscale",
        )
        return {k: v for k, v in values.items() if k not in left_out}
