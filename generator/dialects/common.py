"""What the dialects share: the key check, queueing through the one form, waiting, images.

Each dialect translates its request into sdsite's parameters, queues through
`services.session_create_batch` (the page's queue, workers and progress rows),
waits for the sessions without holding a thread, and translates the result back.
"""

import asyncio
import base64
import functools
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import JsonResponse

from ..addresses import anonymous_api_allowed
from ..forms import GenerateForm
from ..images import base64_upload
from ..models import GenerationSession
from ..ownership import Viewer
from ..services import session_create_batch
from ..web.limits import check_queue, check_rate, client_ip

WAIT_INTERVAL = 0.2
"""Seconds between two reads of the waited sessions."""


def unauthorized(body: dict) -> JsonResponse:
    response = JsonResponse(body, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="sdsite", Basic realm="sdsite"'
    return response


def require_key(error_body: Callable[[str], dict]):
    """Views of a dialect answer 401 without a valid API key, unless SD_API_AUTH=off opens
    them to the client's address (SD_API_ANONYMOUS_FROM, `key_missing`).

    `error_body(message)` shapes the error as the dialect's clients expect it.
    """
    message = "A valid API key is required: Authorization: Bearer <key> (manage.py apikey)."

    def decorate(view):
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def checked_async(request, *args, **kwargs):
                if key_missing(request):
                    return unauthorized(error_body(message))
                return await view(request, *args, **kwargs)

            return checked_async

        @functools.wraps(view)
        def checked(request, *args, **kwargs):
            if key_missing(request):
                return unauthorized(error_body(message))
            return view(request, *args, **kwargs)

        return checked

    return decorate


def key_missing(request) -> bool:
    """The request carries no valid key, and its client may not go without one."""
    return request.api_key is None and not anonymous_api_allowed(client_ip(request))


def owner_of(request) -> dict:
    """Jobs queued with a key belong to its user; with SD_API_AUTH=off and no key, to nobody."""
    return {
        "owner": request.api_key.user if request.api_key else None,
        "owner_key": "",
        "client_ip": client_ip(request),
    }


def own_sessions(request):
    """The key's user's sessions; with SD_API_AUTH=off and no key, those nobody owns."""
    if request.api_key is not None:
        return GenerationSession.objects.owned_by(Viewer(user_id=request.api_key.user_id))
    return GenerationSession.objects.filter(owner__isnull=True, owner_key="")


def decode_image(value: str, field: str) -> SimpleUploadedFile:
    """A base64 image (with or without a data: URL prefix) as an upload for the form."""
    return base64_upload(value, field)


def queue(request, data: dict, files: dict, count: int, owner: dict | None = None):
    """Validate with the page's own form and queue: (sessions, {}) or ([], {field: [errors]}).

    Within the owner's limits (limits.py), or TooManyRequests (a 429). `owner`: the
    sessions' owner fields, when not the request's key's user (`owner_of`)."""
    check_rate(request)
    form = GenerateForm(data | {"count": count}, files)
    if not form.is_valid():
        return [], {field: list(messages) for field, messages in form.errors.items()}
    owner = owner or owner_of(request)
    admit = functools.partial(check_queue, request, owner)
    sessions = session_create_batch(
        **form.queue_options(), **form.parameters(), **owner, admit=admit
    )
    return sessions, {}


def _read(ids) -> list:
    return list(GenerationSession.objects.filter(pk__in=ids).order_by("seed", "created_at"))


async def wait_for_sessions(ids, timeout: float = 3600.0) -> list:
    """The sessions once all have ended, read every WAIT_INTERVAL s on the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sessions = await sync_to_async(_read)(ids)
        if all(session.is_finished for session in sessions) or loop.time() > deadline:
            return sessions
        await asyncio.sleep(WAIT_INTERVAL)


def image_base64(session) -> str:
    with session.image.open("rb") as file:
        return base64.b64encode(file.read()).decode("ascii")
