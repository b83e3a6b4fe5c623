"""sd-webui-controlnet's API: its routes (`/controlnet/...`) and its units in A1111's requests.

Krita's and Photoshop's plug-ins, SillyTavern and scripts drive ControlNet this way:
`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}` in `/sdapi/v1/txt2img` and
`img2img`, with the extension's unit fields, which `units_of` turns into the parameter spec's
units (params.CONTROL_UNIT). Behind the API key like `/sdapi/v1`; bad input is A1111's 422.
"""

import base64

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from ..images import MAX_PREPROCESS_IMAGES, as_png, open_upload
from ..params import CONTROL_RESIZE_LABELS, CONTROL_UNIT, RESIZE_MODES
from ..pipelines import controlnet, preprocessors
from ..web.api_errors import a1111_error_body, a1111_validation_body
from ..web.json_body import BodyError, load_object, type_problem
from .common import decode_image, require_key

VERSION = 2
"""The extension's API version that these routes answer as."""
FIELD = "alwayson_scripts.controlnet.args"
CONTROL_MODES = {index: mode for index, mode in enumerate(controlnet.CONTROL_MODES)}
RESIZE_BY_INDEX = dict(enumerate(RESIZE_MODES))
RESIZE_BY_LABEL = {label: mode for mode, label in CONTROL_RESIZE_LABELS.items()}
UNIT_KINDS = {p.a1111_api: p.kind for p in CONTROL_UNIT if p.a1111_api}
IGNORED_UNIT_FIELDS = ("mask", "low_vram", "processor_res_mode", "hr_option", "save_detected_map")


def invalid(errors: dict) -> JsonResponse:
    return JsonResponse(a1111_validation_body(errors), status=422)


keyed = require_key(a1111_error_body)


def image_of(value):
    """The unit's image: a base64 text, or the extension's {"image": ..., "mask": ...}."""
    if isinstance(value, dict):
        return value.get("image")
    return value


def units_of(body: dict, image_mode: bool) -> tuple[list | None, list, dict]:
    """(units in the spec's terms, ignored fields, errors) of an A1111 request's ControlNet
    units; units None where it has none (disabled units are left out, as the extension
    does). A unit without an image in img2img takes the init image, as the extension's."""
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        return None, [], {"alwayson_scripts": ["Must be an object."]}
    ignored = [f"alwayson_scripts.{key}" for key in scripts if key.lower() != "controlnet"]
    script = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if script is None:
        return None, ignored, {}
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        return None, ignored, {FIELD: ["Must be a list of units."]}
    units = []
    for index, arg in enumerate(args):
        where = f"{FIELD}[{index}]"
        if not isinstance(arg, dict):
            return None, ignored, {where: ["Must be an object."]}
        if arg.get("enabled", True) is False:
            continue
        unit, problem = unit_of(arg, where, body, image_mode)
        if problem:
            return None, ignored, problem
        ignored += [f"{where}.{key}" for key in IGNORED_UNIT_FIELDS if arg.get(key)]
        if isinstance(arg.get("image"), dict) and arg["image"].get("mask"):
            ignored.append(f"{where}.image.mask")
        units.append(unit)
    return units or None, ignored, {}


def unit_of(arg: dict, where: str, body: dict, image_mode: bool) -> tuple[dict, dict]:
    """One extension unit as a spec unit (image still base64), or the error naming its field."""
    image = image_of(arg.get("image") or arg.get("input_image"))
    if image is None and image_mode and body.get("init_images"):
        image = body["init_images"][0]
    if not isinstance(image, str) or not image:
        return {}, {f"{where}.image": ["Send the control image (base64) in image."]}
    unit = {"image": image}
    for key, kind in UNIT_KINDS.items():
        value = arg.get(key)
        if value is None:
            continue
        if key == "resize_mode":
            mode = RESIZE_BY_INDEX.get(value) if isinstance(value, int) else None
            mode = mode or RESIZE_BY_LABEL.get(value) or (value if value in RESIZE_MODES else None)
            if mode is None or isinstance(value, bool):
                labels = ", ".join(CONTROL_RESIZE_LABELS.values())
                return {}, {f"{where}.resize_mode": [f"Use 0, 1, 2 or {labels}."]}
            unit["resize_mode"] = mode
            continue
        if key == "control_mode":
            mode = CONTROL_MODES.get(value) if isinstance(value, int) else value
            if mode not in controlnet.CONTROL_MODES or isinstance(value, bool):
                modes = ", ".join(controlnet.CONTROL_MODES)
                return {}, {f"{where}.control_mode": [f"Use 0, 1, 2 or {modes}."]}
            unit["control_mode"] = mode
            continue
        problem = type_problem("float" if kind == "float" else kind, value)
        if problem:
            return {}, {f"{where}.{key}": [problem]}
        if key in ("processor_res", "threshold_a", "threshold_b") and value == -1:
            continue  # the extension's "the preprocessor's default"
        unit[key] = value
    return unit, {}


def detect_images(body: dict) -> tuple[list, dict]:
    """(base64 PNGs of the detected maps, errors): each input image through the module."""
    module = body.get("controlnet_module", "none")
    # `controlnet_images`: the extension's older name, which webuiapi still sends.
    images = body.get("controlnet_input_images", body.get("controlnet_images"))
    errors = {}
    if not isinstance(module, str) or preprocessors.find(module) is None:
        names = ", ".join(preprocessors.available())
        errors["controlnet_module"] = [
            f"No preprocessor {str(module)[:100]!r}: use one of {names}."
        ]
    if not isinstance(images, list) or not images:
        errors["controlnet_input_images"] = ["Send a list of base64 images."]
    elif len(images) > MAX_PREPROCESS_IMAGES:
        errors["controlnet_input_images"] = [f"At most {MAX_PREPROCESS_IMAGES} images."]
    numbers = {}
    for key, low, high in (
        ("controlnet_processor_res", 64, 2048),
        ("controlnet_threshold_a", 0, 1024),
        ("controlnet_threshold_b", 0, 1024),
    ):
        value = body.get(key)
        if value is None or value == -1:
            continue
        if type_problem("float", value) or not low <= value <= high:
            errors[key] = [f"Must be a number from {low} to {high} (or -1: the default)."]
        numbers[key] = value
    if errors:
        return [], errors
    results = []
    for index, value in enumerate(images):
        where = f"controlnet_input_images[{index}]"
        if type_problem("image", value):
            return [], {"controlnet_input_images": [f"{where}: Must be a string."]}
        try:
            image = open_upload(decode_image(value, "controlnet_input_image"))
        except Exception as exc:  # what it could not read: a 422 naming the image
            messages = getattr(exc, "messages", None) or [str(exc)]
            return [], {"controlnet_input_images": [f"{where}: {messages[0]}"]}
        detected = preprocessors.run(
            image,
            module,
            int(numbers.get("controlnet_processor_res", preprocessors.DEFAULT_RESOLUTION)),
            numbers.get("controlnet_threshold_a"),
            numbers.get("controlnet_threshold_b"),
        )
        results.append(base64.b64encode(as_png(detected)).decode("ascii"))
    return results, {}


@require_GET
@keyed
def version(request):
    return JsonResponse({"version": VERSION})


@require_GET
@keyed
def model_list(request):
    """The usable ControlNets by title (`name [hash]`); `?details=true` adds each one's
    family (sdsite's), so a client can offer only those that fit its checkpoint."""
    usable = [model for model in controlnet.models() if model.problem is None]
    answer = {"model_list": [model.title for model in usable]}
    if request.GET.get("details", "").lower() == "true":
        answer["model_details"] = {m.title: {"family": m.family} for m in usable}
    return JsonResponse(answer)


@require_GET
@keyed
def module_list(request):
    """The preprocessors that run here, with the extension's `module_detail` sliders."""
    detail = {}
    for name, processor in preprocessors.available().items():
        sliders = []
        if processor.resolution:
            sliders.append(
                {"name": "Preprocessor Resolution", "value": preprocessors.DEFAULT_RESOLUTION,
                 "min": 64, "max": 2048}
            )  # fmt: skip
        for threshold in (processor.threshold_a, processor.threshold_b):
            if threshold is not None:
                label, default, low, high = threshold
                sliders.append({"name": label, "value": default, "min": low, "max": high})
        detail[name] = {"model_free": True, "sliders": sliders}
    return JsonResponse({"module_list": list(detail), "module_detail": detail})


@csrf_exempt
@require_POST
@keyed
def detect(request):
    """The preprocessors' results, as the page previews them. A sync view: Django runs it
    in a thread, off the event loop; the inputs are bounded in number, bytes and pixels
    (SD_MAX_UPLOAD_MB, SD_MAX_UPLOAD_PIXELS) before anything is decoded."""
    try:
        body = load_object(request.body)
    except BodyError as problem:
        return invalid({problem.field or "__all__": [problem.message]})
    images, errors = detect_images(body)
    if errors:
        return invalid(errors)
    return JsonResponse({"images": images, "info": "Success"})


urlpatterns = [
    path("version", version),
    path("model_list", model_list),
    path("module_list", module_list),
    path("detect", detect),
]
