"""The page, history and JSON API views: thin, over `services`, the forms and the selectors."""

import base64
import functools
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..addresses import client_ip, private_allowed
from ..forms import GenerateForm
from ..images import as_png, open_upload
from ..metadata import MetadataTooLarge, read_parameters
from ..models import GenerationSession
from ..ownership import owner_fields, save_browser_session, viewer_of
from ..params import BY_NAME, PARAMETERS
from ..pipelines import controlnet, demo, loras, preprocessors, vaes
from ..pipelines.checkpoints import offered_models
from ..services import (
    DEMO_MODEL,
    CancelOutcome,
    model_form_settings,
    session_cancel,
    session_create_batch,
    session_delete,
)
from .api_errors import error_response
from .hub import get_hub
from .json_body import BodyError, load_object, type_problem
from .limits import check_queue, check_rate
from .readiness import readiness_problem
from .serializers import own_queue, session_as_dict
from .sse import STREAM_HEADERS, STREAMS_RETRY_AFTER, open_stream


def visible_sessions(request):
    """The sessions this browser may see; someone else's is as absent as a missing one."""
    return GenerationSession.objects.visible_to(viewer_of(request))


def visible_session_or_404(request, session_id) -> GenerationSession:
    return get_object_or_404(visible_sessions(request), pk=session_id)


def own_sessions(request):
    return GenerationSession.objects.owned_by(viewer_of(request))


def own_session_or_404(request, session_id) -> GenerationSession:
    return get_object_or_404(own_sessions(request), pk=session_id)


def index(request):
    # /?from=<id>: "use these settings again" fills the form from that generation,
    # with a new random seed unless &seed=same ("same seed").
    try:
        source = visible_sessions(request).filter(pk=uuid.UUID(request.GET.get("from", ""))).first()
    except ValueError:
        source = None
    same_seed = request.GET.get("seed") == "same"
    return render(request, "generator/index.html", page_context(source, same_seed=same_seed))


def session_detail(request, session_id):
    session = visible_session_or_404(request, session_id)
    return render(request, "generator/index.html", page_context(session, follow=session))


@require_GET
def session_preview(request, session_id):
    """The session's newest live preview, whichever it is now (`preview_url`)."""
    session = visible_session_or_404(request, session_id)
    for _ in range(3):  # a newer preview replaced it between the read and the open
        if not session.preview:
            break
        try:
            with default_storage.open(session.preview.name) as file:
                response = HttpResponse(file.read(), content_type="image/jpeg")
        except OSError:
            session.refresh_from_db(fields=["preview"])
            continue
        response["Cache-Control"] = "no-cache"
        return response
    raise Http404("No live preview.")


def page_context(settings_from=None, follow=None, same_seed: bool = True) -> dict:
    # SD_MODEL is always among SD_MODELS (the settings make it the first).
    model_settings = {model: model_form_settings(model) for model in offered_models()}
    values = form_values(settings_from, same_seed, default=model_settings[settings.SD_MODEL])
    return {
        "form": GenerateForm(initial=values),
        "parameter_labels": {p.name: p.label for p in PARAMETERS},
        "session": follow,
        "session_json": session_as_dict(follow) if follow else None,
        "model": settings.SD_MODEL,
        "is_demo_model": settings.SD_MODEL == DEMO_MODEL,
        "demo": demo.vocabulary(),
        "loras": list(loras.available().values()),
        "control_modules": list(preprocessors.available()),
        "control_models": [m.name for m in controlnet.models() if m.problem is None],
        "model_settings": model_settings,
        "vae_automatic": {model: automatic_vae(model) for model in model_settings},
    }


def automatic_vae(model: str) -> str | None:
    """The VAE file `Automatic` means for this model (the page's VAE picker says it)."""
    file = vaes.resolve(vaes.AUTOMATIC, model)
    return file.name if file is not None else None


def form_values(session, same_seed: bool, default: dict) -> dict:
    """The form's values beyond the spec's defaults (which its fields carry already): the
    default model's own (`default`: what choosing it in the form sets), or a session's."""
    if session is None:
        return default
    return session.parameter_values() | ({} if same_seed else {"seed": ""})


def history(request):
    sessions = own_sessions(request).with_batch_size()
    page = Paginator(sessions, settings.SD_HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "generator/history.html", {"page": page})


@require_POST
def history_delete(request, session_id):
    session_delete(own_session_or_404(request, session_id))
    messages.success(request, "Deleted the generation and its files.")
    page = request.POST.get("page", "")
    history_url = reverse("generator:history")
    return redirect(f"{history_url}?page={page}" if page.isdigit() else history_url)


@require_GET
def api_loras(request):
    """The LoRA a prompt may name as <lora:name:weight>: name and model family, where told."""
    return JsonResponse(
        {
            "loras": [
                {"name": lora.name, "family": lora.family} for lora in loras.available().values()
            ]
        }
    )


@require_POST
def api_png_info(request):
    """The generation parameters an uploaded image carries (the page's "drop a PNG")."""
    upload = request.FILES.get("image")
    if upload is None:
        return errors_response({"image": ["Send the image as the `image` field."]})
    try:
        image = open_upload(upload)
        source, parameters = read_parameters(image)
    except ValidationError as error:
        return errors_response({"image": error.messages})
    except MetadataTooLarge as error:
        return errors_response({"image": [str(error)]})
    return JsonResponse(
        {
            "source": source or None,
            "parameters": parameters,
            "message": None if parameters else "The image carries no generation settings.",
        }
    )


@require_POST
def api_controlnet_detect(request):
    """The page's preprocessor preview: the uploaded `image` through `module` (a PNG data
    URL). A sync view, so it runs in a thread, off the event loop; the upload is checked in
    bytes and pixels before it is decoded."""
    upload = request.FILES.get("image")
    module = request.POST.get("module", "none")
    if upload is None:
        return errors_response({"image": ["Send the image as the `image` field."]})
    if preprocessors.find(module) is None:
        return errors_response({"module": [f"No preprocessor {module[:100]!r} here."]})
    numbers = {}
    for name in ("processor_res", "threshold_a", "threshold_b"):
        try:
            numbers[name] = float(request.POST[name]) if request.POST.get(name) else None
        except ValueError:
            return errors_response({name: ["Must be a number."]})
    resolution = numbers["processor_res"] or preprocessors.DEFAULT_RESOLUTION
    if not 64 <= resolution <= 2048:
        return errors_response({"processor_res": ["Must be from 64 to 2048."]})
    try:
        image = open_upload(upload)
    except ValidationError as error:
        return errors_response({"image": error.messages})
    detected = preprocessors.run(
        image, module, int(resolution), numbers["threshold_a"], numbers["threshold_b"]
    )
    data = base64.b64encode(as_png(detected)).decode("ascii")
    return JsonResponse({"image": f"data:image/png;base64,{data}", "module": module})


@require_GET
def api_sessions(request):
    """Several of the viewer's visible sessions at once: `?ids=<uuid>,<uuid>` (a batch)."""
    try:
        ids = [uuid.UUID(part) for part in request.GET.get("ids", "").split(",") if part][:64]
    except ValueError:
        return errors_response({"ids": ["Comma-separated session ids."]})
    sessions = visible_sessions(request).filter(pk__in=ids).order_by("seed", "created_at")
    return JsonResponse({"sessions": [session_as_dict(session) for session in sessions]})


@require_GET
def api_queue(request):
    """The viewer's own queued and running generations, oldest first."""
    return JsonResponse({"sessions": own_queue(viewer_of(request))})


def favicon(request):
    return redirect(static("favicon.svg"), permanent=True)


def errors_response(errors: dict) -> JsonResponse:
    return JsonResponse({"errors": errors}, status=400)


QUEUE_FIELDS = {"count": "int", "callback_url": "text"}


def parse_body(request) -> tuple[dict, dict]:
    """The submitted fields (JSON body or form) and the errors found before validation.

    Form posts carry strings, which the form converts. A JSON body is strict
    (`json_body`): an object, each field of its JSON type from the parameter
    spec (`"steps": "2"` and `"prompt": true` are refused, not converted), no
    NaN, infinity or lone surrogate anywhere, and unknown fields are errors
    rather than silently dropped.
    """
    if request.content_type != "application/json":
        return request.POST, {}
    try:
        data = load_object(request.body)
    except BodyError as error:
        return {}, {error.field or "__all__": [error.message]}
    errors = {}
    for key, value in data.items():
        parameter = BY_NAME.get(key)
        kind = parameter.kind if parameter else QUEUE_FIELDS.get(key)
        if kind is None:
            errors[key] = ["Unknown field."]
        elif value is not None and (problem := type_problem(kind, value)):
            errors[key] = [problem]
    return data, errors


@require_POST
def api_generate(request):
    check_rate(request)
    data, errors = parse_body(request)
    if errors:
        return errors_response(errors)
    form = GenerateForm(data, request.FILES)
    if not form.is_valid():
        return errors_response({field: list(msgs) for field, msgs in form.errors.items()})
    owner = owner_fields(request)
    # The cap's count, the jobs and the browser's key that owns them: one commit, or nothing.
    sessions = session_create_batch(
        **form.queue_options(),
        **form.parameters(),
        **owner,
        admit=functools.partial(check_queue, request, owner),
        with_jobs=lambda: save_browser_session(request),
    )
    body = session_as_dict(sessions[0])
    body["session_ids"] = [str(session.pk) for session in sessions]
    return JsonResponse(body, status=202)


@require_http_methods(["GET", "DELETE"])
def api_session(request, session_id):
    if request.method == "DELETE":
        session_delete(own_session_or_404(request, session_id))
        return HttpResponse(status=204)
    return JsonResponse(session_as_dict(visible_session_or_404(request, session_id)))


@require_POST
def api_cancel(request, session_id):
    session = visible_session_or_404(request, session_id)
    outcome = session_cancel(session.pk)
    if outcome == CancelOutcome.NOT_FOUND:
        raise Http404("No such session.")
    session.refresh_from_db(fields=["status"])
    body = {"session_id": str(session.pk), "status": session.status}
    if outcome == CancelOutcome.FINISHED:
        body["errors"] = {"__all__": [f"The session has already ended ({session.status})."]}
        return JsonResponse(body, status=409)
    if outcome == CancelOutcome.CANCELLING:
        body["cancel_requested"] = True
        return JsonResponse(body, status=202)  # the worker stops it at its next step
    return JsonResponse(body)


@require_GET
async def api_progress(request, session_id):
    # Under uvicorn, sdsite.asgi serves this URL from generator.web.lean_route
    # (the same stream without a thread per request); this view serves it
    # under any other server.
    viewer = await sync_to_async(viewer_of)(request)
    last_event_id = request.headers.get("Last-Event-ID")
    address = client_ip(request)
    status, events = await open_stream(session_id, last_event_id, viewer, address)
    if status == 404:
        raise Http404("No such session.")
    if status == 503:
        response = error_response(503, events)
        response["Retry-After"] = str(STREAMS_RETRY_AFTER)
        return response
    if events is None:
        return HttpResponse(status=status)
    response = StreamingHttpResponse(events)
    for header, value in STREAM_HEADERS:
        response[header] = value
    return response


async def api_progress_stats(request):
    """The progress hub of this web process (streams, reads): for staff, and the networks
    in SD_METRICS_ALLOWED (this machine by default), only."""
    user = await request.auser()
    if not user.is_staff and not private_allowed(request):
        return error_response(403, "For staff, or the networks in SD_METRICS_ALLOWED, only.")
    return JsonResponse(get_hub().stats())


def healthz(request):
    """Liveness: the process answers; no database access."""
    return HttpResponse("ok", content_type="text/plain")


def readyz(request):
    """Readiness: the database answers, every migration is applied and both disks have room
    (503 with a reason; a full disk's path only to SD_METRICS_ALLOWED, the probes' networks)."""
    problem = readiness_problem(detailed=private_allowed(request))
    if problem:
        return JsonResponse({"ready": False, "reason": problem}, status=503)
    return JsonResponse({"ready": True})
