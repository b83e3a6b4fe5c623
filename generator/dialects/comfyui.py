"""ComfyUI's API under `/comfyui/`, for Open WebUI, SillyTavern and scripts that drive ComfyUI.

A workflow in ComfyUI's API format becomes one sdsite job (a batch for `batch_size`)
through the page's own form (`comfyui_nodes.plan_of` reads the graph); its progress
comes over the WebSocket `/comfyui/ws` (`comfyui_ws.py`, fed by the SSE streams' hub)
and its result from `/history` and `/view`, as ComfyUI's clients read them. Each caller
sees its own prompts only: those of its API key's user, or with SD_API_AUTH=off and no key,
those nobody owns. Errors come in ComfyUI's shape (`api_errors.comfyui_error_body`).
"""

import contextlib
import os
import platform
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError, transaction
from django.http import FileResponse, JsonResponse
from django.urls import path
from django.utils.crypto import salted_hmac
from django.utils.text import get_valid_filename
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import __version__
from ..images import as_png, open_upload
from ..models import (
    FINISHED_STATUSES,
    PROMPT_SESSION_FIELDS,
    ComfyPrompt,
    Status,
    prompt_sessions,
)
from ..pipelines import checkpoints
from ..pipelines.embeddings import listing as embeddings_listing
from ..pipelines.loras import available as available_loras
from ..services import session_cancel
from ..web.api_errors import comfyui_error_body
from ..web.json_body import BodyError, load_object
from .a1111 import checkpoint_choice
from .comfyui_nodes import (
    ACCEPTED,
    LISTED_ONLY,
    Plan,
    WorkflowError,
    image_entry,
    node_error,
    object_info,
    plan_of,
    timestamp,
)
from .common import own_sessions, queue, require_key

UPLOADS = "comfyui-inputs"
"""The media folder of LoadImage's inputs, one folder per owner."""
HISTORY = 64
"""The entries GET /history answers without `max_items` (newest first): SillyTavern polls it
every 100 ms for its newest prompt (bench/comfyui_history.py times it)."""
MAX_HISTORY = 200
"""The most entries GET /history answers, whatever `max_items` asks."""


def error(message: str, kind: str = "invalid_request", details: str = "", field=None) -> dict:
    return comfyui_error_body(message, kind, details, field=field)


keyed = require_key(lambda message: error(message, "unauthorized"))


def bad_request(message: str, kind: str = "invalid_request", field=None) -> JsonResponse:
    """A 400 in ComfyUI's shape; `field`: the request's field at fault, if any."""
    return JsonResponse(error(message, kind, field=field or ""), status=400)


def owner_id_of(request) -> int | None:
    return request.api_key.user_id if request.api_key is not None else None


def own_prompts(request):
    """The caller's prompts: its key's user's, or with no key (SD_API_AUTH=off) nobody's."""
    owner = owner_id_of(request)
    prompts = ComfyPrompt.objects.select_related("session").only(
        "number", "prompt_id", "client_id", "nodes", "workflow", "owner_id", "session_id",
        *(f"session__{name}" for name in PROMPT_SESSION_FIELDS),
    )  # fmt: skip
    if owner is None:
        return prompts.filter(owner__isnull=True)
    return prompts.filter(owner_id=owner)


def upload_folder(owner_id: int | None) -> str:
    """The owner's folder of inputs: named by a keyed hash of the owner, so that with open
    media (SD_PRIVATE_MEDIA off) nobody finds another's uploads by guessing a user id and
    a file name under /media/."""
    owner = "anonymous" if owner_id is None else f"user-{owner_id}"
    return f"{UPLOADS}/{salted_hmac(UPLOADS, owner).hexdigest()[:32]}"


def upload_name(name: str) -> str | None:
    """An input's name as stored: a plain file name (never a path), or None."""
    if not isinstance(name, str) or "/" in name or "\\" in name:
        return None
    cleaned = get_valid_filename(name)[:100] if name.strip(". ") else ""
    return cleaned or None


def uploaded_image(request, name: str) -> SimpleUploadedFile | None:
    """A LoadImage input the caller uploaded, as an upload for the form, or None."""
    stored = upload_name(name)
    path_name = f"{upload_folder(owner_id_of(request))}/{stored}" if stored else None
    if path_name is None or not default_storage.exists(path_name):
        return None
    with default_storage.open(path_name, "rb") as file:
        return SimpleUploadedFile("init_image.png", file.read())


def read_prompt_body(request) -> tuple[dict, JsonResponse | None]:
    """POST /prompt's body: JSON whatever its Content-Type (Open WebUI's urllib sends none,
    SillyTavern's fetch text/plain)."""
    try:
        body = load_object(request.body)
    except BodyError as problem:
        return {}, body_error(problem)
    client_id = body.get("client_id")
    if client_id is None and isinstance(body.get("extra_data"), dict):
        client_id = body["extra_data"].get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        return {}, bad_request("client_id must be a string.", "invalid_prompt", "client_id")
    body["client_id"] = (client_id or "")[:200]
    return body, None


def body_error(problem: BodyError) -> JsonResponse:
    """A body JSON refuses (NaN, 1e400, a lone surrogate, too deep): the node's input when it
    is in one (`prompt.<node>.inputs.<input>`), else the body's field."""
    where = problem.path
    if len(where) >= 4 and where[0] == "prompt" and where[2] == "inputs":
        refused = node_error({}, str(where[1]), str(where[3]), problem.message)
        return JsonResponse(refused.body, status=400)
    return bad_request(problem.message, "invalid_json", problem.field or "__all__")


def prompt_id_of(body: dict) -> tuple[uuid.UUID, JsonResponse | None]:
    """The client's own `prompt_id` (newer ComfyUI takes one), else a new one."""
    given = body.get("prompt_id")
    if given is None:
        return uuid.uuid4(), None
    try:
        return uuid.UUID(str(given)), None
    except ValueError:
        return uuid.uuid4(), bad_request("prompt_id must be a UUID.", "invalid_prompt", "prompt_id")


def queue_workflow(request) -> JsonResponse:
    """Check the workflow, queue its job, record the prompt: ComfyUI's answer, or its error."""
    body, refused = read_prompt_body(request)
    if refused:
        return refused
    prompt_id, refused = prompt_id_of(body)
    if refused:
        return refused
    if ComfyPrompt.objects.filter(prompt_id=prompt_id).exists():
        return bad_request("This prompt_id is taken.", "invalid_prompt", "prompt_id")
    workflow = body.get("prompt")
    try:
        plan = plan_of(workflow)
        files = image_files(request, plan)
    except WorkflowError as problem:
        return JsonResponse(problem.body, status=400)
    data = dict(plan.data)
    if "model" in data:
        model, problem = checkpoint_choice(request, data["model"])
        if problem:
            loader = plan.nodes["loader"]
            raised = node_error(workflow, loader, "ckpt_name", problem, plan.nodes["save"])
            return JsonResponse(raised.body, status=400)
        data["model"] = model
    elif request.api_key is not None and request.api_key.default_model:
        data["model"] = request.api_key.default_model
    sessions, errors = queue(request, data, files, plan.count)
    if errors:
        field, messages = next(iter(errors.items()))
        node, name = plan.where(field)
        raised = node_error(workflow, node, name, " ".join(messages), plan.nodes["save"])
        return JsonResponse(raised.body, status=400)
    # The history shows the seed used (sdsite's seeds stop at 2**32 - 1: comfyui_nodes.used_seed).
    workflow[plan.nodes["sampler"]]["inputs"]["seed"] = sessions[0].seed
    try:
        with transaction.atomic():
            prompt = ComfyPrompt.objects.create(
                prompt_id=prompt_id, session=sessions[0], owner_id=owner_id_of(request),
                client_id=body["client_id"], nodes=plan.nodes, workflow=workflow,
            )  # fmt: skip
    except IntegrityError:  # the prompt_id taken meanwhile: the jobs go, the client is told
        for session in sessions:
            session_cancel(session.pk)
        return bad_request("This prompt_id is taken.", "invalid_prompt", "prompt_id")
    return JsonResponse(
        {"prompt_id": str(prompt.prompt_id), "number": prompt.number, "node_errors": {}}
    )


def image_files(request, plan: Plan) -> dict:
    if plan.image_name is None:
        return {}
    upload = uploaded_image(request, plan.image_name)
    if upload is None:
        raise node_error(
            {plan.nodes["load_image"]: {"class_type": "LoadImage"}}, plan.nodes["load_image"],
            "image", f"Invalid image file: {plan.image_name[:100]} (POST /upload/image first)",
            plan.nodes["save"],
        )  # fmt: skip
    return {"init_image": upload}


def unfinished_count(request) -> int:
    return own_sessions(request).unfinished().count()


@csrf_exempt
@require_http_methods(["GET", "POST"])
@keyed
def prompt(request):
    if request.method == "GET":
        return JsonResponse({"exec_info": {"queue_remaining": unfinished_count(request)}})
    return queue_workflow(request)


def queue_item(prompt: ComfyPrompt) -> list:
    """A prompt as ComfyUI's queue and history list it."""
    extra = {"client_id": prompt.client_id} if prompt.client_id else {}
    return [prompt.number, str(prompt.prompt_id), prompt.workflow, extra, [prompt.nodes["save"]]]


def status_messages(prompt: ComfyPrompt, sessions: list) -> tuple[str, list]:
    """(ComfyUI's status_str, the messages its history keeps) for finished jobs."""
    started = timestamp() if sessions[0].started_at is None else stamp(sessions[0].started_at)
    ended = max((stamp(s.finished_at) for s in sessions if s.finished_at), default=started)
    pid = str(prompt.prompt_id)
    messages = [
        ["execution_start", {"prompt_id": pid, "timestamp": started}],
        ["execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": started}],
    ]
    failed = next((s for s in sessions if s.status == Status.FAILED), None)
    cancelled = next((s for s in sessions if s.status == Status.CANCELLED), None)
    if failed is None and cancelled is None:
        messages.append(["execution_success", {"prompt_id": pid, "timestamp": ended}])
        return "success", messages
    sampler = prompt.nodes["sampler"]
    base = {"prompt_id": pid, "node_id": sampler, "node_type": "KSampler", "executed": []}
    if failed is not None:
        messages.append(
            ["execution_error", base | {
                "exception_message": failed.error or "Generation failed.",
                "exception_type": "RuntimeError", "traceback": [], "current_inputs": {},
                "current_outputs": {}, "timestamp": ended}]
        )  # fmt: skip
    else:
        messages.append(["execution_interrupted", base | {"timestamp": ended}])
    return "error", messages


def stamp(moment) -> int:
    return int(moment.timestamp() * 1000)


def history_entry(prompt: ComfyPrompt, sessions: list) -> dict | None:
    """A prompt's /history entry once every job of it (`sessions`) has ended; None before."""
    if not all(session.status in FINISHED_STATUSES for session in sessions):
        return None
    status_str, messages = status_messages(prompt, sessions)
    save = prompt.nodes["save"]
    images = [image_entry(s.image.name) for s in sessions if s.status == Status.COMPLETED]
    return {
        "prompt": queue_item(prompt),
        "outputs": {save: {"images": images}} if images else {},
        "status": {"status_str": status_str, "completed": status_str == "success",
                   "messages": messages},
        "meta": {save: {"node_id": save, "display_node": save, "parent_node": None,
                        "real_node_id": save}} if images else {},
    }  # fmt: skip


def history_of(prompts) -> dict:
    """The entries of those of `prompts` (read with their first session) that have ended."""
    prompts = [p for p in prompts if p.session.status in FINISHED_STATUSES]
    sessions = prompt_sessions(prompts)
    found = {}
    for prompt in prompts:
        entry = history_entry(prompt, sessions[prompt.pk])
        if entry is not None:
            found[str(prompt.prompt_id)] = entry
    return found


@csrf_exempt
@require_http_methods(["GET", "POST"])
@keyed
def history(request):
    """GET: the caller's finished prompts, newest first (`max_items`, default HISTORY, at
    most MAX_HISTORY).
    POST `{"delete": [ids]}` or `{"clear": true}`: forget entries (their jobs stay)."""
    if request.method == "POST":
        return forget(request)
    try:
        most = min(int(request.GET.get("max_items") or HISTORY), MAX_HISTORY)
    except ValueError:
        return bad_request("max_items must be a number.", field="max_items")
    prompts = own_prompts(request).order_by("-number")[: max(most, 0) + 50]
    entries = history_of(prompts)
    return JsonResponse(dict(list(entries.items())[:most]))


def forget(request) -> JsonResponse:
    try:
        body = load_object(request.body)
    except BodyError as problem:
        return body_error(problem)
    if body.get("clear") is True:
        own_prompts(request).delete()
    ids = body.get("delete") or []
    if not isinstance(ids, list):
        return bad_request("delete must be a list of prompt ids.", field="delete")
    own_prompts(request).filter(prompt_id__in=valid_ids(ids)).delete()
    return JsonResponse({})


def valid_ids(values) -> list:
    found = []
    for value in values[:1000]:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            found.append(uuid.UUID(str(value)))
    return found


@require_GET
@keyed
def history_one(request, prompt_id):
    """One prompt's entry, once it has finished; `{}` before, or for another's (as ComfyUI
    answers for an id it does not know)."""
    prompt = own_prompts(request).filter(prompt_id__in=valid_ids([prompt_id])).first()
    return JsonResponse(history_of([prompt] if prompt else []))


@csrf_exempt
@require_http_methods(["GET", "POST"])
@keyed
def queue_view(request):
    """GET: the caller's running and pending prompts. POST `{"delete": [ids]}` or
    `{"clear": true}`: cancel pending ones."""
    unfinished = [
        prompt
        for prompt in own_prompts(request)
        .filter(session__status__in=[Status.PENDING, Status.RUNNING])
        .order_by("number")[:MAX_HISTORY]
    ]
    if request.method == "POST":
        try:
            body = load_object(request.body)
        except BodyError as problem:
            return body_error(problem)
        wanted = set(valid_ids(body.get("delete") or [])) if body.get("clear") is not True else None
        for prompt in unfinished:
            if wanted is None or prompt.prompt_id in wanted:
                for session in prompt.sessions():
                    if session.status == Status.PENDING:
                        session_cancel(session.pk)
        return JsonResponse({})
    running, pending = [], []
    batches = prompt_sessions(unfinished)
    for prompt in unfinished:
        sessions = batches[prompt.pk]
        is_running = any(s.status == Status.RUNNING for s in sessions)
        (running if is_running else pending).append(queue_item(prompt))
    return JsonResponse({"queue_running": running, "queue_pending": pending})


@csrf_exempt
@require_POST
@keyed
def interrupt(request):
    """Stop the caller's running prompt (or the one `prompt_id` names), with its batch."""
    try:
        body = load_object(request.body)
    except BodyError:
        body = {}
    prompts = own_prompts(request).filter(session__status__in=[Status.PENDING, Status.RUNNING])
    if body.get("prompt_id"):
        prompts = prompts.filter(prompt_id__in=valid_ids([body["prompt_id"]]))
    for prompt in prompts:
        sessions = prompt.sessions()
        if any(session.status == Status.RUNNING for session in sessions):
            for session in sessions:
                session_cancel(session.pk)
    for session in own_sessions(request).running():  # jobs queued by the other APIs too
        if not body.get("prompt_id"):
            session_cancel(session.pk)
    return JsonResponse({})


@require_GET
@keyed
def view(request):
    """An output image of the caller's (or an input it uploaded), by ComfyUI's
    `filename`, `subfolder` and `type`."""
    filename = request.GET.get("filename", "")
    subfolder = request.GET.get("subfolder", "")
    kind = request.GET.get("type", "output")
    not_found = JsonResponse(error("No such image, or not yours.", "not_found"), status=404)
    if not filename or ".." in filename or ".." in subfolder or "\\" in filename + subfolder:
        return not_found
    if kind == "input":
        stored = upload_name(filename)
        name = f"{upload_folder(owner_id_of(request))}/{stored}" if stored else None
        if name is None or subfolder or not default_storage.exists(name):
            return not_found
        return FileResponse(default_storage.open(name, "rb"), content_type="image/png")
    if kind != "output":
        return not_found
    name = f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename
    session = own_sessions(request).filter(image=name, status=Status.COMPLETED).first()
    if session is None:
        return not_found
    return FileResponse(session.image.open("rb"), content_type="image/png")


@csrf_exempt
@require_POST
@keyed
def upload_image(request):
    """LoadImage's input: checked in bytes and pixels before decoding (images.open_upload),
    stored re-encoded as PNG under the caller's own folder, by its file name (a second upload
    of that name replaces the first, as ComfyUI's `overwrite`)."""
    upload = request.FILES.get("image")
    if upload is None:
        return bad_request("Send the image as the multipart field `image`.", field="image")
    name = upload_name(os.path.basename(upload.name or ""))
    if name is None:
        return bad_request("The image needs a file name.", field="image")
    try:
        image = open_upload(upload)
    except ValidationError as problem:
        return bad_request(" ".join(problem.messages), "invalid_image", "image")
    stored = f"{upload_folder(owner_id_of(request))}/{name}"
    default_storage.delete(stored)
    default_storage.save(stored, ContentFile(as_png(image.convert("RGB"))))
    return JsonResponse({"name": name, "subfolder": "", "type": "input"})


def uploads_of(request) -> list[str]:
    folder = upload_folder(owner_id_of(request))
    try:
        return default_storage.listdir(folder)[1][:1000]
    except (FileNotFoundError, NotImplementedError):
        return []


@require_GET
@keyed
def object_info_all(request):
    uploads = uploads_of(request)
    return JsonResponse({name: object_info(name, uploads) for name in ACCEPTED + LISTED_ONLY})


@require_GET
@keyed
def object_info_one(request, node):
    if node not in ACCEPTED + LISTED_ONLY:
        return JsonResponse({})  # as ComfyUI answers for a node it does not have
    return JsonResponse({node: object_info(node, uploads_of(request))})


@require_GET
@keyed
def system_stats(request):
    """What the clients' connection checks read; no server paths, no argv."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    free = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    device = settings.SD_DEVICE or "cpu"
    return JsonResponse(
        {
            "system": {
                "os": os.name, "ram_total": pages * size, "ram_free": free * size,
                "comfyui_version": f"sdsite {__version__}",
                "python_version": platform.python_version(), "pytorch_version": "",
                "embedded_python": False, "argv": [],
            },
            "devices": [
                {"name": device, "type": device.split(":")[0], "index": 0, "vram_total": 0,
                 "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0},
            ],
        }
    )  # fmt: skip


@require_GET
@keyed
def embeddings(request):
    """The embeddings' names (all of them: which fit depends on the workflow's model)."""
    found = embeddings_listing(settings.SD_MODEL)
    return JsonResponse(sorted({*found["loaded"], *found["skipped"]}), safe=False)


MODEL_FOLDERS = {
    "checkpoints": lambda: [f.name for f in checkpoints.scan("checkpoint") if f.usable],
    "loras": lambda: [f"{name}.safetensors" for name in available_loras()],
    "vae": lambda: [f.name for f in checkpoints.scan("vae") if f.usable],
    "embeddings": lambda: [f.name for f in checkpoints.scan("embedding") if f.usable],
}


@require_GET
@keyed
def models(request):
    return JsonResponse(list(MODEL_FOLDERS), safe=False)


@require_GET
@keyed
def models_in(request, folder):
    listing = MODEL_FOLDERS.get(folder)
    if listing is None:
        return JsonResponse(error(f"No model folder {folder[:50]!r}.", "not_found"), status=404)
    return JsonResponse(listing(), safe=False)


urlpatterns = [
    path("prompt", prompt),
    path("queue", queue_view),
    path("history", history),
    path("history/<str:prompt_id>", history_one),
    path("view", view),
    path("upload/image", upload_image),
    path("object_info", object_info_all),
    path("object_info/<str:node>", object_info_one),
    path("system_stats", system_stats),
    path("interrupt", interrupt),
    path("embeddings", embeddings),
    path("models", models),
    path("models/<str:folder>", models_in),
]
