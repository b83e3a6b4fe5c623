import json

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from .forms import GenerateForm
from .hub import get_hub
from .models import GenerationSession
from .queue import CancelOutcome, request_cancel
from .services import default_size, session_as_dict, session_create
from .sse import STREAM_HEADERS, open_stream


def index(request):
    return render(request, "generator/index.html", page_context(GenerateForm()))


def session_detail(request, session_id):
    session = get_object_or_404(GenerationSession, pk=session_id)
    return render(request, "generator/index.html", page_context(GenerateForm(), session))


def page_context(form, session=None) -> dict:
    return {
        "form": form,
        "session": session,
        "session_json": session_as_dict(session) if session else None,
        "model": settings.SD_MODEL,
        "is_demo_model": settings.SD_MODEL == "demo",
        "default_size": default_size(settings.SD_MODEL),
    }


def errors_response(errors: dict) -> JsonResponse:
    return JsonResponse({"errors": errors}, status=400)


def parse_body(request) -> tuple[dict, dict]:
    """The submitted fields (JSON body or form) and the errors found before validation."""
    if request.content_type != "application/json":
        return request.POST, {}
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}, {"__all__": ["The body is not valid JSON."]}
    if not isinstance(data, dict):
        return {}, {"__all__": ["The body must be a JSON object."]}
    nested = [key for key, value in data.items() if isinstance(value, list | dict)]
    return data, {key: ["Must be a single value."] for key in nested}


@require_POST
def api_generate(request):
    data, errors = parse_body(request)
    if errors:
        return errors_response(errors)
    form = GenerateForm(data)
    if not form.is_valid():
        return errors_response({field: list(msgs) for field, msgs in form.errors.items()})
    session = session_create(**form.parameters())
    return JsonResponse(
        {
            "session_id": str(session.pk),
            "status": session.status,
            "total_steps": session.total_steps,
            "progress_url": f"/api/progress/{session.pk}",
        },
        status=202,
    )


@require_GET
def api_session(request, session_id):
    return JsonResponse(session_as_dict(get_object_or_404(GenerationSession, pk=session_id)))


@require_POST
def api_cancel(request, session_id):
    outcome = request_cancel(session_id)
    if outcome == CancelOutcome.NOT_FOUND:
        raise Http404("No such session.")
    session = GenerationSession.objects.get(pk=session_id)
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
    # Under uvicorn, sdsite.asgi serves this URL from generator.progress_asgi
    # (the same stream without a thread per request); this view serves it
    # under any other server.
    status, events = await open_stream(session_id, request.headers.get("Last-Event-ID"))
    if status == 404:
        raise Http404("No such session.")
    if events is None:
        return HttpResponse(status=status)
    response = StreamingHttpResponse(events)
    for header, value in STREAM_HEADERS:
        response[header] = value
    return response


async def api_progress_stats(request):
    """The progress hub of this web process: open streams and reads, for monitoring."""
    return JsonResponse(get_hub().stats())


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")
