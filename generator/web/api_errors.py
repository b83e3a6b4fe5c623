"""Every error under /api/ answers JSON with a message, whoever produced it.

Views answer their own 4xx as JSON already; this catches the rest: Django's
404 and 500 pages, a 405 from a method decorator, and the CSRF failure page,
so an API client never has to parse HTML.
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.views.csrf import csrf_failure as html_csrf_failure

from ..disk import full_disk_of
from ..limits import TooManyRequests
from ..retention import MediaQuotaExceeded

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


def _as_json(request, response):
    if (
        response.status_code < 400
        or not request.path.startswith(API_PREFIX)
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    message = MESSAGES.get(response.status_code, response.reason_phrase)
    if response.status_code == 405 and response.get("Allow"):
        message = f"Method not allowed: use {response['Allow']}."
    json_response = error_response(response.status_code, message)
    if response.get("Allow"):
        json_response["Allow"] = response["Allow"]
    return json_response


class JsonApiErrorsMiddleware:
    """Turns any non-JSON error response under /api/ into the API's JSON error."""

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
        refused: SQLite's "database or disk is full", ENOSPC): 507, on every API (sdsite's
        and the dialects'), naming the disk by its role; the log names its path."""
        if isinstance(exception, MediaQuotaExceeded):
            return error_response(507, str(exception))
        full = full_disk_of(exception)
        if full is not None:
            logger.warning("Refused %s %s: %s", request.method, request.path, full.for_operator())
            return error_response(507, full.user_message)
        if isinstance(exception, TooManyRequests):
            response = error_response(429, str(exception))
            response["Retry-After"] = str(exception.retry_after)
            return response
        if not request.path.startswith(API_PREFIX):
            return None
        if isinstance(exception, OperationalError | InterfaceError):
            busy = "locked" in str(exception).lower()
            message = (
                "The database is busy: try again in a few seconds."
                if busy
                else "The database does not answer: try again in a few seconds."
            )
            response = error_response(503, message)
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
