"""Every error under /api/, /sdapi/, /comfyui/ and /v1/ answers JSON, in that API's own shape.

Views answer their own 4xx as JSON already; this catches the rest: Django's
404 and 500 pages (an unknown route under a prefix), a 405 from a method
decorator, and the CSRF failure page, so an API client never has to parse HTML.
The shapes are defined here, once: sdsite's `{"message", "errors"}`,
A1111's (its HTTPException's `{"error", "detail", "errors"}`, and FastAPI's 422
`{"detail": [{"loc", "msg", "type"}]}` for fields), OpenAI's `{"error": {...}}`,
ComfyUI's `{"error": {"type", "message", "details", "extra_info"}, "node_errors"}`.
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.views.csrf import csrf_failure as html_csrf_failure

from ..disk import MediaQuotaExceeded, full_disk_of
from ..media_storage import StorageUnavailable
from .limits import TooManyRequests

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
RETRY_AFTER_SECONDS = 5
MESSAGES = {
    400: "Bad request.",
    403: "Forbidden.",
    404: "Not found: no such session, or not yours.",
    405: "Method not allowed.",
    413: "The request is too large.",
    429: "Too many requests: try again later.",
    507: "The server's storage is full.",
    503: "The service is unavailable: try again in a few seconds.",
    500: "Internal server error: the server logged it.",
}


def error_body(message: str) -> dict:
    """The API's error shape: `{"message": ..., "errors": {"__all__": [...]}}`."""
    return {"message": message, "errors": {"__all__": [message]}}


def error_response(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse(error_body(message) | extra, status=status)


def a1111_error_body(message: str) -> dict:
    """A1111's error (its API's exception handler): `detail` is what FastAPI clients read."""
    return {"error": "HTTPException", "detail": message, "errors": message}


def a1111_validation_body(errors: dict) -> dict:
    """A1111's (FastAPI's) 422 for fields: `{"detail": [{"loc": ["body", field], "msg", "type"}]}`,
    with `errors` as text and `fields` as sdsite's `{field: [messages]}`."""
    detail = [
        {"loc": ["body", *([] if field == "__all__" else [field])], "msg": message,
         "type": "value_error"}
        for field, messages in errors.items()
        for message in messages
    ]  # fmt: skip
    text = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
    return {"error": "RequestValidationError", "detail": detail, "errors": text, "fields": errors}


def openai_error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error: `{"error": {"message", "type", "param", "code"}}`."""
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def comfyui_error_body(
    message: str, kind: str = "invalid_request", details: str = "", node_errors=None, field=None
) -> dict:
    """ComfyUI's error: `{"error": {"type", "message", "details", "extra_info"}, "node_errors"}`
    (`node_errors`: {node id: {"errors": [...], "class_type", "dependent_outputs"}}); a field of
    the request at fault that is no node's input is named in `extra_info.field`."""
    extra_info = {"field": field} if field else {}
    return {
        "error": {"type": kind, "message": message, "details": details, "extra_info": extra_info},
        "node_errors": node_errors or {},
    }


PREFIXES = (
    ("/sdapi/", a1111_error_body),
    ("/comfyui/", comfyui_error_body),
    ("/controlnet/", a1111_error_body),  # sd-webui-controlnet's routes, beside A1111's
    ("/v1/", openai_error_body),
    (API_PREFIX, error_body),
)
"""Each API's path prefix and the error body its clients read."""


def shape_of(path: str):
    """The error body function of the API a path belongs to; None outside the APIs."""
    return next((shape for prefix, shape in PREFIXES if path.startswith(prefix)), None)


def _as_json(request, response):
    shape = shape_of(request.path)
    if (
        response.status_code < 400
        or shape is None
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    message = MESSAGES.get(response.status_code, response.reason_phrase)
    if response.status_code == 404 and getattr(request, "resolver_match", None) is None:
        message = f"Not found: {request.path} is no route of this API."
    if response.status_code == 405 and response.get("Allow"):
        message = f"Method not allowed: use {response['Allow']}."
    json_response = JsonResponse(shape(message), status=response.status_code)
    if response.get("Allow"):
        json_response["Allow"] = response["Allow"]
    return json_response


class JsonApiErrorsMiddleware:
    """Turns any non-JSON error response under an API's prefix into that API's JSON error."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return _as_json(request, self.get_response(request))

    async def __acall__(self, request):
        return _as_json(request, await self.get_response(request))

    def process_exception(self, request, exception):
        """A database that is busy (SQLite locked past its timeout) or away: 503, retry later.

        Media over SD_MEDIA_QUOTA_GB, or a disk without room (under its floor, or a write
        refused: SQLite's "database or disk is full", ENOSPC): 507, on every API in its own
        shape, naming the disk by its role; the log names its path. The media storage (S3)
        away: 503 with Retry-After, its short reason."""
        shape = shape_of(request.path) or error_body
        if isinstance(exception, MediaQuotaExceeded):
            return JsonResponse(shape(str(exception)), status=507)
        full = full_disk_of(exception)
        if full is not None:
            logger.warning("Refused %s %s: %s", request.method, request.path, full.for_operator())
            return JsonResponse(shape(full.user_message), status=507)
        if isinstance(exception, StorageUnavailable):  # an upload or an image not stored
            logger.warning("Refused %s %s: %s", request.method, request.path, exception)
            response = JsonResponse(shape(f"{exception}: try again in a few seconds."), status=503)
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        if isinstance(exception, TooManyRequests):
            response = JsonResponse(shape(str(exception)), status=429)
            response["Retry-After"] = str(exception.retry_after)
            return response
        if shape_of(request.path) is None:
            return None
        if isinstance(exception, OperationalError | InterfaceError):
            busy = "locked" in str(exception).lower()
            message = (
                "The database is busy: try again in a few seconds."
                if busy
                else "The database does not answer: try again in a few seconds."
            )
            response = JsonResponse(shape(message), status=503)
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return None


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a JSON 403 that says what to send for /api/, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        return error_response(
            403,
            "CSRF check failed: send the csrftoken cookie's value in an X-CSRFToken header "
            f"({reason}).",
        )
    return html_csrf_failure(request, reason=reason)
