"""OpenAI's images API (`/v1/images/generations`, `/v1/models`), for n8n, Open WebUI, `openai`.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so its clients raise their usual exceptions. `quality`, `style`, `user` and
other fields sdsite has no use for are ignored.
"""

import json
import re
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from ..models import Status
from .common import image_base64, queue, require_key
from .common import wait_for_sessions as wait

SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")  # int() refuses past 4,300 digits
FIELDS = {"width": "size", "height": "size", "count": "n"}
"""sdsite's field names in OpenAI's terms, for the `param` of an error."""


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def invalid(message: str, param: str | None = None, status: int = 400) -> JsonResponse:
    return JsonResponse(error_body(message, param), status=status)


keyed = require_key(lambda message: error_body(message, code="invalid_api_key"))


@csrf_exempt
@require_POST
@keyed
async def generations(request):
    try:  # off the event loop: up to SD_MAX_BODY_MB of JSON
        body = await sync_to_async(json.loads, thread_sensitive=False)(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return invalid("The body is not valid JSON.")
    if not isinstance(body, dict):
        return invalid("The body must be a JSON object.")
    # callback_url: sdsite's webhook (the openai client sends it through extra_body).
    data = {"prompt": body.get("prompt") or "", "callback_url": body.get("callback_url") or ""}
    model = body.get("model")
    if model and model in settings.SD_MODELS:
        data["model"] = model
    elif model and model not in ("dall-e-2", "dall-e-3", "gpt-image-1"):
        return invalid(f"The model {model!r} does not exist: see GET /v1/models.", "model", 404)
    size = body.get("size")
    if size and size != "auto":
        match = SIZE.match(str(size))
        if not match:
            return invalid("size must be WIDTHxHEIGHT, e.g. 512x512.", "size")
        data["width"], data["height"] = (int(side) for side in match.groups())
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        return invalid("response_format must be url or b64_json.", "response_format")
    count = body.get("n") or 1
    sessions, errors = await sync_to_async(queue)(request, data, {}, count)
    if errors:
        field, messages = next(iter(errors.items()))
        return invalid(f"{field}: {' '.join(messages)}", FIELDS.get(field, field))
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
