"""AUTOMATIC1111's `/sdapi/v1`, for Open WebUI, SillyTavern, chaiNNer, Krita plugins and webuiapi.

Field names and shapes follow A1111's `modules/api/models.py`: the request
models ignore keys they do not know (clients rely on it: SillyTavern sends its
own `url` and `auth`), and what sdsite cannot do (face restoration, scripts) is
ignored as A1111 ignores what it cannot do, and listed in the answer's `info` under
`ignored`. Unlike A1111's, `progress`, `interrupt` and
`skip` are per key: a caller sees and stops only its own jobs.

Each image of a batch is a job of its own: `interrupt` cancels the caller's running
jobs and the rest of their batches; `skip` cancels only the running ones, and the
batch goes on with its next image (with SD_WORKER_BATCH > 1, the images one pipeline
call makes together are skipped together). `send_images: false` answers no images
(they stay in the history); `save_images` changes nothing, since every image is
kept in the history until SD_KEEP_DAYS.
"""

import json
from html import escape

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from PIL import Image

from ..images import open_upload
from ..metadata import A1111_KEY, MetadataTooLarge, a1111_parameters, read_parameters
from ..models import Status
from ..params import BY_A1111_OVERRIDE, PARAMETERS, RESIZE_MODES
from ..pipelines import checkpoints, model_choice
from ..pipelines.checkpoints import display_name
from ..pipelines.loras import available as available_loras
from ..pipelines.model_hashes import known_sha256
from ..pipelines.schedulers import ALL_SCHEDULERS, SCHEDULE_TYPES_SETTINGS, SCHEDULERS
from ..pipelines.upscalers import LATENT_MODES
from ..pipelines.upscalers import listing as upscaler_listing
from ..pipelines.vaes import AUTOMATIC, NONE
from ..services import session_cancel
from ..web.api_errors import a1111_error_body, a1111_validation_body
from ..web.json_body import BodyError, load_object, type_problem
from ..web.snapshots import preview_data_url
from .common import decode_image, image_base64, own_sessions, queue, require_key
from .common import wait_for_sessions as wait
from .controlnet import units_of as control_units

VERSION = "sdsite"
# A1111's inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent noise"}
# A1111's resize_mode: 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize
# (latent upscale), which sdsite does as just resize.
RESIZES = {0: RESIZE_MODES[0], 1: RESIZE_MODES[1], 2: RESIZE_MODES[2], 3: RESIZE_MODES[0]}
"""A1111 >= 1.9 names the schedule apart: `DPM++ 2M` with `scheduler: Karras`."""
SAME_SAMPLER = "Use same sampler"
"""A1111's `hr_sampler_name` for the first pass's sampler (sdsite's blank)."""
IGNORED_IF_SET = (
    "restore_faces",
    "tiling",
    "script_name",
    "styles",
    "subseed_strength",
    "inpaint_full_res",
    "refiner_checkpoint",
)
FIELDS = {
    **{p.a1111_api: p.kind for p in PARAMETERS if p.a1111_api},
    "sampler_name": "text",
    "sampler_index": "text",
    "batch_size": "int",
    "n_iter": "int",
    "override_settings": "object",
    "init_images": "list",
    "mask": "image",
    "resize_mode": "int",
    "inpainting_fill": "int",
    "inpainting_mask_invert": "int",
    "callback_url": "text",
    "send_images": "bool",
    "save_images": "bool",
    "alwayson_scripts": "object",
}
"""The JSON kind of each field sdsite reads (json_body.JSON_TYPES): the parameters' own from
the spec, under their A1111 names, and A1111's others. Keys it does not read are ignored."""
RANGES = {
    "resize_mode": (min(RESIZES), max(RESIZES)),
    "inpainting_fill": (min(FILLS), max(FILLS)),
    "inpainting_mask_invert": (0, 1),
    "batch_size": (1, None),
    "n_iter": (1, None),
}
"""A1111's own integer fields' bounds (the parameters' are the spec's, checked by the form)."""
NAMES = (
    {p.name: p.a1111_api for p in PARAMETERS if p.a1111_api}
    | {
        "scheduler": "sampler_name",
        "model": "override_settings.sd_model_checkpoint",
        "init_image": "init_images",
        "mask_image": "mask",
        "count": "batch_size",
        "controlnet": "alwayson_scripts.controlnet.args",
    }
    | {p.name: f"override_settings.{p.a1111_override}" for p in PARAMETERS if p.a1111_override}
)
"""sdsite's field names in A1111's terms, for the errors of the form."""


OPTIONS = {
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "samples_save": True,
    "save_images_add_number": True,
    "grid_save": False,
    "return_grid": False,
    "enable_pnginfo": True,
    "eta_noise_seed_delta": 0,
    "img2img_fix_steps": False,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
    "sd_lora": "None",
    "sd_hypernetwork": "None",
    "upscaler_for_img2img": None,
    "face_restoration_model": None,
    "token_merging_ratio": 0.0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "forge_additional_modules": [],
}
"""GET /options' keys besides the model: A1111's defaults for what sdsite does not change."""
CMD_FLAGS = {
    "api": True,
    "nowebui": True,
    "listen": False,
    "port": None,
    "api_auth": None,
    "lowvram": False,
    "medvram": False,
    "no_half": False,
    "xformers": False,
    "ckpt_dir": None,
    "lora_dir": None,
    "embeddings_dir": None,
    "hide_ui_dir_config": True,
    "disable_safe_unpickle": False,
}


def error(message: str) -> dict:
    return a1111_error_body(message)


def invalid(errors: dict) -> JsonResponse:
    """FastAPI's 422 for fields, as A1111 answers a request its models refuse."""
    return JsonResponse(a1111_validation_body(errors), status=422)


keyed = require_key(error)


def body_of(request) -> tuple[dict, dict]:
    """The request's JSON object, or {} and the errors ({field or "__all__": [message]})."""
    try:
        return load_object(request.body), {}
    except BodyError as problem:
        return {}, {problem.field or "__all__": [problem.message]}


def check_fields(body: dict) -> dict:
    """Each field sdsite reads has its JSON type and A1111's range: {field: [message]}."""
    errors = {}
    for key, kind in FIELDS.items():
        value = body.get(key)
        if value is None:
            continue
        problem = type_problem(kind, value)
        if problem is None and key in RANGES:
            low, high = RANGES[key]
            if value < low or (high is not None and value > high):
                problem = f"Must be from {low} to {high}." if high else f"Must be {low} or more."
        if problem:
            errors[key] = [problem]
    if errors:
        return errors
    for index, image in enumerate(body.get("init_images") or []):
        if problem := type_problem("image", image):
            return {"init_images": [f"init_images[{index}]: {problem}"]}
    overrides = body.get("override_settings") or {}
    kinds = {"sd_model_checkpoint": "text"} | {k: p.kind for k, p in BY_A1111_OVERRIDE.items()}
    for key, kind in kinds.items():
        value = overrides.get(key)
        if value is not None and (problem := type_problem(kind, value)):
            return {f"override_settings.{key}": [problem]}
    return {}


def sampler_of(body: dict) -> str | None:
    """The sdsite sampler for A1111's names, old (`DPM++ 2M Karras`) and new (its schedule
    type apart, in `scheduler`)."""
    name = body.get("sampler_name") or body.get("sampler_index") or "Euler"
    return name if name in ALL_SCHEDULERS else None


def schedule_type_of(body: dict) -> str | None:
    """sdsite's schedule type for A1111's `scheduler` (its label or its name: `sgm_uniform`)."""
    given = body.get("scheduler") or "automatic"
    by_key = {name.lower().replace(" ", "_"): name for name in SCHEDULE_TYPES_SETTINGS}
    return by_key.get(given.lower().replace(" ", "_"))


def translate(request, body: dict, image_mode: bool) -> tuple[dict, dict, list, dict]:
    """(form data, files, ignored keys, errors) for an A1111 request body whose fields
    `check_fields` passed."""
    errors, ignored = {}, []
    sampler = sampler_of(body)
    if sampler is None:
        field = "sampler_index" if not body.get("sampler_name") else "sampler_name"  # the old name
        errors[field] = [f"Sampler not found: use one of {', '.join(ALL_SCHEDULERS)}."]
    model = (body.get("override_settings") or {}).get("sd_model_checkpoint")
    if model is None and request.api_key is not None and request.api_key.default_model:
        model = request.api_key.default_model
    model, problem = checkpoint_choice(request, model)
    if problem:
        errors["override_settings.sd_model_checkpoint"] = [problem]
    ignored += [key for key in IGNORED_IF_SET if body.get(key)]
    ignored += [
        f"override_settings.{key}"
        for key in (body.get("override_settings") or {})
        if key != "sd_model_checkpoint" and key not in BY_A1111_OVERRIDE
    ]
    # A1111's own field names (and its settings overrides), read through the parameter spec.
    data = {p.name: body[p.a1111_api] for p in PARAMETERS if p.a1111_api in body}
    overrides = body.get("override_settings") or {}
    data |= {p.name: overrides[k] for k, p in BY_A1111_OVERRIDE.items() if k in overrides}
    if "sd_vae" not in data and (vae := current_vae(request)) != AUTOMATIC:
        data["sd_vae"] = vae  # the caller's option, as A1111's loaded VAE
    if data.get("seed") == -1:
        del data["seed"]  # random
    schedule_type = schedule_type_of(body)
    if schedule_type is None:
        names = ", ".join(SCHEDULE_TYPES_SETTINGS)
        errors["scheduler"] = [f"Schedule type not found: use one of {names}."]
    data |= {"scheduler": sampler, "model": model, "callback_url": body.get("callback_url")}
    data["schedule_type"] = schedule_type
    data.setdefault("steps", 20)
    data.setdefault("negative_prompt", "")
    files = {}
    if image_mode:
        images = body.get("init_images") or []
        if not images:
            errors["init_images"] = ["Send one image (base64) in init_images."]
        else:
            files["init_image"] = decode_image(images[0], "init_image")
        if body.get("mask"):
            files["mask_image"] = decode_image(body["mask"], "mask_image")
            if body.get("inpainting_mask_invert"):
                ignored.append("inpainting_mask_invert")
        fill = body.get("inpainting_fill")
        data["inpainting_fill"] = FILLS[1 if fill is None else fill]
        data["resize_mode"] = RESIZES[body.get("resize_mode") or 0]
    if data.get("hr_sampler_name") == SAME_SAMPLER:
        data["hr_sampler_name"] = ""
    if not image_mode and not data.get("enable_hr"):  # txt2img's is the hires fix's
        data.pop("strength", None)
    if image_mode:
        data.pop("enable_hr", None)  # A1111's img2img has no hires fix
    units, unit_ignored, unit_errors = control_units(body, image_mode)
    ignored += unit_ignored
    errors |= unit_errors
    if units:
        data["controlnet"] = units
    return {k: v for k, v in data.items() if v is not None}, files, ignored, errors


def accept(request, image_mode: bool) -> tuple[list, dict, list, dict]:
    """Read, check and queue a request: (sessions, body, ignored keys, errors in A1111's
    names). Off the event loop: it decodes the body and the images."""
    body, errors = body_of(request)
    if errors:
        return [], body, [], errors
    errors = check_fields(body)
    if errors:
        return [], body, [], errors
    data, files, ignored, errors = translate(request, body, image_mode)
    if errors:
        return [], body, ignored, errors
    count = (body.get("batch_size") or 1) * (body.get("n_iter") or 1)
    sessions, errors = queue(request, data, files, count)
    return sessions, body, ignored, {NAMES.get(k, k): v for k, v in errors.items()}


def info_of(sessions, body: dict, ignored: list) -> dict:
    first = sessions[0]
    seeds = [session.seed for session in sessions]
    return {
        **{p.a1111_api: getattr(first, p.name) for p in PARAMETERS if p.a1111_api},
        # What override_settings set, under the parameter's own name in sdsite.
        **{p.name: getattr(first, p.name) for p in BY_A1111_OVERRIDE.values()},
        "all_prompts": [session.prompt for session in sessions],
        "all_negative_prompts": [session.negative_prompt for session in sessions],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "sampler_name": first.scheduler,
        "batch_size": body.get("batch_size", 1),
        "restore_faces": False,
        "sd_model_name": first.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "face_restoration_model": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [infotext(session) for session in sessions],
        "styles": [],
        "job_timestamp": first.created_at.strftime("%Y%m%d%H%M%S"),
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        "ignored": ignored,
        "session_ids": [str(session.pk) for session in sessions],
        "errors": [s.error for s in sessions if s.status == Status.FAILED],
    }


def infotext(session) -> str:
    """The infotext the worker wrote into the image (with the files' hashes); rebuilt from
    the session where there is no image."""
    if session.image:
        try:
            with session.image.open("rb") as file, Image.open(file) as image:
                text = image.info.get(A1111_KEY)
        except (OSError, ValueError):
            text = None
        if isinstance(text, str):
            return text
    return a1111_parameters(session)


async def generate(request, image_mode: bool):
    sessions, body, ignored, errors = await sync_to_async(accept)(request, image_mode)
    if errors:
        return invalid(errors)
    finished = await wait([session.pk for session in sessions])
    done = [session for session in finished if session.status == Status.COMPLETED]
    if not done and any(session.status == Status.FAILED for session in finished):
        message = next(s.error for s in finished if s.status == Status.FAILED)
        return JsonResponse(error(message), status=500)
    send = body.get("send_images", True)
    images = [await sync_to_async(image_base64)(session) for session in done if send]
    info = await sync_to_async(info_of)(finished, body, ignored)
    return JsonResponse({"images": images, "parameters": body, "info": json.dumps(info)})


@csrf_exempt
@require_POST
@keyed
async def txt2img(request):
    return await generate(request, image_mode=False)


@csrf_exempt
@require_POST
@keyed
async def img2img(request):
    return await generate(request, image_mode=True)


@require_GET
@keyed
def progress(request):
    """The caller's current job, from the same rows as the SSE stream."""
    unfinished = list(own_sessions(request).unfinished().order_by("created_at"))
    running = next((s for s in unfinished if s.status == Status.RUNNING), None)
    state = {
        "skipped": False,
        "interrupted": False,
        "job": "",
        # A1111 counts a hires job's passes as two jobs of its state.
        "job_count": sum(2 if is_hires(s) else 1 for s in unfinished),
        "job_timestamp": timezone.now().strftime("%Y%m%d%H%M%S"),
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if running is None:
        return JsonResponse(
            {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
             "textinfo": None if not unfinished else "Waiting...", "current_task": None}
        )  # fmt: skip
    state |= {
        "job": str(running.pk),
        "job_timestamp": running.created_at.strftime("%Y%m%d%H%M%S"),
        "sampling_step": running.current_step,
        "sampling_steps": running.total_steps,
    }
    if is_hires(running):  # each pass's own steps, as A1111's state has them
        first = running.steps
        second = max(running.total_steps - first, 0)
        in_second = running.current_step >= first and running.phase != "denoising"
        in_second = in_second or running.current_step > first
        state |= {
            "job_no": 1 if in_second else 0,
            "sampling_step": running.current_step - first if in_second else running.current_step,
            "sampling_steps": second if in_second else first,
        }
    image = None
    if request.GET.get("skip_current_image", "false").lower() != "true" and running.preview:
        url = preview_data_url(running.preview.name)
        image = url.split(",", 1)[1] if url else None
    return JsonResponse(
        {
            "progress": running.current_step / running.total_steps if running.total_steps else 0,
            "eta_relative": running.eta_seconds or 0.0,
            "state": state,
            "current_image": image,
            "textinfo": running.phase or None,
            "current_task": str(running.pk),
        }
    )


def is_hires(session) -> bool:
    return session.enable_hr and session.mode == "txt2img"


@require_GET
@keyed
def upscalers(request):
    """A1111's list (None, Lanczos, Nearest, each model file by stem); `model_path` is the
    file's name in its folder, `unusable` the reason a file cannot be used."""
    return JsonResponse(upscaler_listing(), safe=False)


@require_GET
@keyed
def latent_upscale_modes(request):
    return JsonResponse([{"name": name} for name in LATENT_MODES], safe=False)


EXTRAS_FIELDS = {
    **{p.a1111_api: p.kind for p in PARAMETERS if p.needs == "upscale"},
    "resize_mode": "int",
    "image": "image",
    "imageList": "list",
}
EXTRAS_RANGES = {"resize_mode": (0, 1)}
EXTRAS_NAMES = {p.name: p.a1111_api for p in PARAMETERS if p.needs == "upscale"}
EXTRAS_NAMES |= {"init_image": "image"}


def extras_errors(body: dict) -> dict:
    errors = {}
    for key, kind in EXTRAS_FIELDS.items():
        value = body.get(key)
        if value is not None and (problem := type_problem(kind, value)):
            errors[key] = [problem]
        elif key in EXTRAS_RANGES and value is not None:
            low, high = EXTRAS_RANGES[key]
            if not low <= value <= high:
                errors[key] = [f"Must be from {low} to {high}."]
    return errors


def extras_data(body: dict) -> dict:
    """An upscale job's form data from A1111's extras fields: `resize_mode` 1 upscales to
    `upscaling_resize_w` x `_h` (A1111's 512 each unless given), 0 by `upscaling_resize`."""
    data = {p.name: body.get(p.a1111_api) for p in PARAMETERS if p.needs == "upscale"}
    data = {k: v for k, v in data.items() if v is not None} | {"job": "upscale"}
    if body.get("resize_mode") == 1:
        data.setdefault("upscaling_resize_w", 512)
        data.setdefault("upscaling_resize_h", 512)
    else:
        data.pop("upscaling_resize_w", None)
        data.pop("upscaling_resize_h", None)
    return data


def queue_extras(request, body: dict, images: list) -> tuple[list, dict]:
    """One upscale job per image (each a job like the others: owner, progress, history)."""
    errors = extras_errors(body)
    if errors:
        return [], errors
    data, sessions = extras_data(body), []
    for index, image in enumerate(images):
        if not isinstance(image, str) or not image:
            return [], {"imageList": [f"imageList[{index}]: send an image (base64)."]}
        files = {"init_image": decode_image(image, "init_image")}
        queued, errors = queue(request, data, files, 1)
        if errors:
            return [], {EXTRAS_NAMES.get(k, k): v for k, v in errors.items()}
        sessions += queued
    return sessions, {}


async def extras(request, images_of) -> JsonResponse | tuple:
    body, errors = body_of(request)
    images = [] if errors else images_of(body)
    if not errors and not images:
        errors = {"image": ["Send an image (base64)."]}
    if errors:
        return invalid(errors)
    sessions, errors = await sync_to_async(queue_extras)(request, body, images)
    if errors:
        return invalid(errors)
    finished = await wait([session.pk for session in sessions])
    failed = [s.error for s in finished if s.status != Status.COMPLETED]
    if failed:
        return JsonResponse(error(failed[0] or "The upscale was cancelled."), status=500)
    finished.sort(key=lambda s: [x.pk for x in sessions].index(s.pk))
    encoded = [await sync_to_async(image_base64)(session) for session in finished]
    info = await sync_to_async(a1111_parameters)(finished[0])
    return encoded, f"<p>{escape(info.splitlines()[-1])}</p>"


@csrf_exempt
@require_POST
@keyed
async def extra_single_image(request):
    answer = await extras(request, lambda body: [body["image"]] if body.get("image") else [])
    if isinstance(answer, JsonResponse):
        return answer
    images, html_info = answer
    return JsonResponse({"html_info": html_info, "image": images[0]})


@csrf_exempt
@require_POST
@keyed
async def extra_batch_images(request):
    def images_of(body: dict) -> list:
        listed = body.get("imageList") if isinstance(body.get("imageList"), list) else []
        return [each.get("data") if isinstance(each, dict) else None for each in listed]

    answer = await extras(request, images_of)
    if isinstance(answer, JsonResponse):
        return answer
    images, html_info = answer
    return JsonResponse({"html_info": html_info, "images": images})


def stop(request, whole_batch: bool) -> JsonResponse:
    running = list(own_sessions(request).running())
    targets = {session.pk for session in running}
    if whole_batch:  # interrupt stops the rest of the batch too, skip only the current image
        batches = {session.batch_id for session in running if session.batch_id}
        targets |= set(
            own_sessions(request)
            .pending()
            .filter(batch_id__in=batches)
            .values_list("pk", flat=True)
        )
    for pk in targets:
        session_cancel(pk)
    return JsonResponse({})


@csrf_exempt
@require_POST
@keyed
def interrupt(request):
    return stop(request, whole_batch=True)


@csrf_exempt
@require_POST
@keyed
def skip(request):
    return stop(request, whole_batch=False)


@require_GET
@keyed
def sd_models(request):
    """SD_MODELS, then the checkpoints folder's files with A1111's fields; `filename` is
    relative to the folder (no server paths). A file that cannot be used says why."""
    listed = [
        {"title": model, "model_name": display_name(model), "hash": None, "sha256": None,
         "filename": display_name(model), "config": None}
        for model in settings.SD_MODELS
    ]  # fmt: skip
    for file in checkpoints.scan("checkpoint"):
        sha = known_sha256(file)
        entry = {"title": checkpoints.title(file), "model_name": file.model_name,
                 "hash": sha[:10] if sha else None, "sha256": sha, "filename": file.name,
                 "config": None}  # fmt: skip
        if file.family:
            entry["family"] = file.family
        if file.problem:
            entry["unusable"] = file.problem
        listed.append(entry)
    return JsonResponse(listed, safe=False)


@csrf_exempt
@require_http_methods(["GET", "POST"])
@keyed
def options(request):
    """`sd_model_checkpoint` and `sd_vae` are the caller's defaults: per key, or for everyone
    with API auth off (no key to hold them), as A1111's are. The other keys clients read
    answer A1111's defaults (OPTIONS); what they set besides these two is accepted and
    ignored, as A1111 takes keys it does not know."""
    if request.method == "POST":
        body, errors = body_of(request)
        chosen = {name: body[name] for name in OPTION_FIELDS if body.get(name) is not None}
        for name, value in chosen.items():
            if not errors and (problem := type_problem("text", value)):
                errors = {name: [problem]}
        if errors:
            return invalid(errors)
        for name, value in chosen.items():
            value, problem = OPTION_FIELDS[name](request, value)
            if problem:
                return JsonResponse(error(problem), status=422)
            chosen[name] = value
        for name, value in chosen.items():
            set_option(request, name, value)
        return JsonResponse(None, safe=False)
    model = current_model(request)
    return JsonResponse(
        OPTIONS
        | {
            "sd_model_checkpoint": checkpoint_title(model),
            "sd_checkpoint_hash": model_sha(model),
            "sd_vae": current_vae(request),
        }
    )


def vae_choice(request, vae: str) -> tuple[str | None, str | None]:
    """(the VAE as jobs name it, a problem): Automatic, None or a usable file of the folder."""
    if vae in (AUTOMATIC, NONE):
        return vae, None
    file = checkpoints.lookup(vae, "vae")
    if file is None:
        return None, f"VAE not found: {vae[:200]}"
    if file.problem:
        return None, f"The VAE {file.name} cannot be used: {file.problem}"
    return file.name, None


def set_option(request, name: str, value: str) -> None:
    key = request.api_key
    if key is None:
        model_choice.set_global(name, value)
        return
    field = {"sd_model_checkpoint": "default_model", "sd_vae": "default_vae"}[name]
    setattr(key, field, value)
    key.save(update_fields=[field])


def current_vae(request) -> str:
    """The VAE a caller's requests use when they name none (A1111's `sd_vae` option)."""
    key = request.api_key
    if key is not None:
        return key.default_vae or AUTOMATIC
    return model_choice.global_option("sd_vae") or AUTOMATIC


@require_GET
@keyed
def samplers(request):
    names = [name for name in SCHEDULERS if not name.endswith(" Karras")]
    return JsonResponse([{"name": n, "aliases": [], "options": {}} for n in names], safe=False)


@require_GET
@keyed
def schedulers(request):
    return JsonResponse(
        [
            {"name": label.lower().replace(" ", "_"), "label": label, "aliases": None,
             "default_rho": 7.0 if label == "Karras" else -1, "need_inner_model": False}
            for label in SCHEDULE_TYPES_SETTINGS
        ],
        safe=False,
    )  # fmt: skip


@require_GET
@keyed
def empty_list(request):
    return JsonResponse([], safe=False)


@require_GET
@keyed
def cmd_flags(request):
    """A1111's command-line flags that clients read (no folders: no server paths)."""
    return JsonResponse(CMD_FLAGS)


@require_GET
@keyed
def scripts(request):
    return JsonResponse({"txt2img": [], "img2img": []})


@csrf_exempt
@require_POST
@keyed
def png_info(request):
    body, errors = body_of(request)
    image = body.get("image")
    if not errors and (problem := type_problem("image", image) if image else "Send an image."):
        errors = {"image": [problem]}
    if errors:
        return invalid(errors)
    upload = decode_image(image, "image")
    try:
        image = open_upload(upload)
    except Exception as exc:  # what it could not read: a 422 naming the image
        return invalid({"image": getattr(exc, "messages", None) or [str(exc)]})
    try:
        _, parameters = read_parameters(image)
    except MetadataTooLarge as exc:
        return invalid({"image": [str(exc)]})
    text = image.info.get("parameters", "")
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    return JsonResponse({"info": text, "items": items, "parameters": parameters})


urlpatterns = [
    path("txt2img", txt2img),
    path("img2img", img2img),
    path("progress", progress),
    path("interrupt", interrupt),
    path("skip", skip),
    path("sd-models", sd_models),
    path("options", options),
    path("samplers", samplers),
    path("schedulers", schedulers),
    path("upscalers", upscalers),
    path("latent-upscale-modes", latent_upscale_modes),
    path("extra-single-image", extra_single_image),
    path("extra-batch-images", extra_batch_images),
    path("hypernetworks", empty_list),
    path("face-restorers", empty_list),
    path("prompt-styles", empty_list),
    path("cmd-flags", cmd_flags),
    path("scripts", scripts),
    path("png-info", png_info),
]


def current_model(request) -> str:
    """The model a caller's requests use when they name none."""
    key = request.api_key
    if key is not None:
        return key.default_model or settings.SD_MODEL
    return model_choice.global_model() or settings.SD_MODEL


def checkpoint_choice(request, model: str | None) -> tuple[str | None, str | None]:
    """(the model as jobs name it, a problem): a checkpoint named by title, name or hash
    becomes its name; one that cannot be used, or none by that name, is a problem naming it."""
    if model is None:
        return (None if request.api_key is not None else model_choice.global_model()), None
    if model in settings.SD_MODELS:
        return model, None
    file = checkpoints.lookup(model)
    if file is None:
        return None, f"Model not found: {model[:200]}"
    if file.problem:
        return None, f"The checkpoint {file.name} cannot be used: {file.problem}"
    return file.name, None


OPTION_FIELDS = {"sd_model_checkpoint": checkpoint_choice, "sd_vae": vae_choice}
"""The options `POST /options` sets, each with its check."""


def checkpoint_title(model: str) -> str:
    file = checkpoints.lookup(model) if model not in settings.SD_MODELS else None
    return checkpoints.title(file) if file is not None else model


def model_sha(model: str) -> str | None:
    file = checkpoints.lookup(model) if model not in settings.SD_MODELS else None
    return known_sha256(file) if file is not None else None


@csrf_exempt
@require_POST
@keyed
def refresh_checkpoints(request):
    """A1111 rescans its folder; sdsite's listings read the folder each time: this starts
    hashing the new files now."""
    for file in checkpoints.scan("checkpoint"):
        known_sha256(file)
    return JsonResponse(None, safe=False)


@require_GET
@keyed
def sd_vae(request):
    return JsonResponse(
        [{"model_name": f.name, "filename": f.name} for f in checkpoints.scan("vae") if f.usable],
        safe=False,
    )


@csrf_exempt
@require_POST
@keyed
def refresh_nothing(request):
    """refresh-vae, refresh-loras: the listings read their folders each time."""
    return JsonResponse(None, safe=False)


@require_GET
@keyed
def loras(request):
    return JsonResponse(
        [{"name": lora.name, "alias": lora.name, "path": lora.path.name, "metadata": {}}
         for lora in available_loras().values()],
        safe=False,
    )  # fmt: skip


@require_GET
@keyed
def embeddings(request):
    """A1111's answer for the caller's current checkpoint: the embeddings that fit its
    family `loaded`, the others `skipped`."""
    from ..pipelines.embeddings import listing

    return JsonResponse(listing(current_model(request)))


urlpatterns += [
    path("refresh-checkpoints", refresh_checkpoints),
    path("sd-vae", sd_vae),
    path("refresh-vae", refresh_nothing),
    path("loras", loras),
    path("refresh-loras", refresh_nothing),
    path("embeddings", embeddings),
]
