"""OpenAI's images API (`/v1/images/generations`, `/v1/models`), for n8n, Open WebUI, `openai`.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so its clients raise their usual exceptions. `quality`, `style`, `user` and
other fields sdsite has no use for are ignored.
"""

import re
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from ..models import Status
from ..web.api_errors import openai_error_body
from ..web.json_body import BodyError, load_object, type_problem
from .common import image_base64, queue, require_key
from .common import wait_for_sessions as wait

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")  # int() refuses past 4,300 digits
FIELDS = {"width": "size", "height": "size", "count": "n"}
"""sdsite's field names in OpenAI's terms, for the `param` of an error."""
KINDS = {
    "prompt": "text",
    "model": "text",
    "size": "text",
    "response_format": "text",
    "n": "int",
    "callback_url": "text",
    "quality": "text",
    "style": "text",
    "user": "text",
}
"""The JSON kind of each field (json_body.JSON_TYPES); others are ignored, as documented."""

error_body = openai_error_body


def invalid(message: str, param: str | None = None, status: int = 400) -> JsonResponse:
    return JsonResponse(error_body(message, param), status=status)


keyed = require_key(lambda message: error_body(message, code="invalid_api_key"))


def read(request) -> tuple[dict, JsonResponse | None]:
    """The request's fields as sdsite's form data with `count`, or the error to answer."""
    try:
        body = load_object(request.body)
    except BodyError as problem:
        return {}, invalid(problem.message, problem.field)
    for field, kind in KINDS.items():
        value = body.get(field)
        if value is not None and (problem := type_problem(kind, value)):
            return {}, invalid(f"{field}: {problem}", field)
    if not body.get("prompt"):
        return {}, invalid("prompt: a prompt is required.", "prompt")
    # callback_url: sdsite's webhook (the openai client sends it through extra_body).
    data = {"prompt": body["prompt"], "callback_url": body.get("callback_url") or ""}
    model = body.get("model")
    if model and model in settings.SD_MODELS:
        data["model"] = model
    elif model and model not in ("dall-e-2", "dall-e-3", "gpt-image-1"):
        return {}, invalid(f"The model {model!r} does not exist: see GET /v1/models.", "model", 404)
    size = body.get("size")
    if size and size != "auto":
        match = SIZE.match(size)
        if not match:
            return {}, invalid("size must be WIDTHxHEIGHT, e.g. 512x512.", "size")
        data["width"], data["height"] = (int(side) for side in match.groups())
    if body.get("response_format") not in (None, "url", "b64_json"):
        return {}, invalid("response_format must be url or b64_json.", "response_format")
    n = body.get("n")
    if n is not None and not 1 <= n <= settings.SD_MAX_COUNT:
        return {}, invalid(f"n: Must be from 1 to {settings.SD_MAX_COUNT}.", "n")
    return data | {"count": n or 1, "response_format": body.get("response_format")}, None


def accept(request) -> tuple[list, dict, JsonResponse | None]:
    """Read, check and queue a request, off the event loop: (sessions, data, error)."""
    data, refused = read(request)
    if refused:
        return [], data, refused
    count = data.pop("count")
    response_format = data.pop("response_format") or "url"
    sessions, errors = queue(request, data, {}, count)
    if errors:
        field, messages = next(iter(errors.items()))
        refused = invalid(f"{field}: {' '.join(messages)}", FIELDS.get(field, field))
    return sessions, {"response_format": response_format}, refused


@csrf_exempt
@require_POST
@keyed
async def generations(request):
    sessions, options, refused = await sync_to_async(accept)(request)
    if refused:
        return refused
    response_format = options["response_format"]
    finished = await wait([session.pk for session in sessions])
    done = [session for session in finished if session.status == Status.COMPLETED]
    if not done:
        reasons = "; ".join(s.error or s.status for s in finished)
        return JsonResponse(
            {"error": {"message": f"Generation failed: {reasons}", "type": "server_error",
                       "param": None, "code": None}},
            status=500,
        )  # fmt: skip
    items = []
    for session in done:
        if response_format == "b64_json":
            item = {"b64_json": await sync_to_async(image_base64)(session)}
        else:
            item = {"url": request.build_absolute_uri(session.image.url)}
        items.append(item | {"revised_prompt": session.prompt})
    return JsonResponse({"created": int(time.time()), "data": items})


@require_GET
@keyed
def models(request):
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "sdsite"}
                for model in settings.SD_MODELS
            ],
        }
    )


urlpatterns = [
    path("images/generations", generations),
    path("models", models),
]
