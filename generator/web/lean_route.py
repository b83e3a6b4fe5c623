"""The progress stream as a lean ASGI route: no middleware, no thread per open stream.

Django's ASGI handler runs each request inside a thread-sensitive context whose
thread (created for the sync `request_started` receivers and middleware) lives
as long as the response. For progress streams that stay open for minutes, a
thousand watchers would mean a thousand idle threads. sdsite.asgi sends
GET /api/progress/<id> here instead; the Django view serves the same stream
under any other server (runserver, the test client). Who watches is read as
Django would: the browser session's cookie, and an API key (Bearer or Basic) as
ApiKeyMiddleware reads it.
"""

import asyncio
import contextlib
import dataclasses
import json
import uuid

from django.conf import settings
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from ..apikeys import key_in_header
from .api_errors import error_body
from .connections import WRITE_BODY
from .hub import get_hub
from .sse import STREAM_HEADERS, STREAMS_RETRY_AFTER, open_stream

PREFIX = "/api/progress/"


def is_progress_request(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX)


NOT_FOUND = json.dumps(error_body("No such session.")).encode()
BAD_HOST = json.dumps(error_body("Unknown host.")).encode()
# What Django's SecurityMiddleware and XFrameOptionsMiddleware add to every
# other response; this route runs without them.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def host_allowed(headers: dict) -> bool:
    """Django's own ALLOWED_HOSTS check, which this route would otherwise skip."""
    host, _ = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(host) and validate_host(host, allowed)


async def respond(send, status: int, body: bytes = b"", extra_headers=()) -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    headers += list(extra_headers)
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + SECURITY_HEADERS}
    )
    await send({"type": "http.response.body", "body": body})


async def progress_app(scope, receive, send) -> None:
    headers = dict(scope["headers"])
    if not host_allowed(headers):
        return await respond(send, 400, BAD_HOST)
    try:
        session_id = uuid.UUID(scope["path"][len(PREFIX) :])
    except ValueError:
        return await respond(send, 404, NOT_FOUND)
    last_event_id = headers.get(b"last-event-id", b"").decode("latin-1")
    cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin-1"))
    hub = get_hub()
    viewer = await hub.read_viewer(cookies.get(settings.SESSION_COOKIE_NAME))
    key = key_in_header(headers.get(b"authorization", b"").decode("latin-1"))
    if key:  # as ApiKeyMiddleware does on the API routes: the key's user, else as before
        user_id = await hub.read_key_user(key)
        if user_id is not None:
            viewer = dataclasses.replace(viewer, user_id=user_id)
    address = (scope.get("client") or ("", 0))[0]
    write_body = scope.get("extensions", {}).get(WRITE_BODY)
    status, events = await open_stream(session_id, last_event_id, viewer, address, write_body)
    if status == 503:
        body = json.dumps(error_body(events)).encode()
        # Closed after the answer: under a flood a refused socket should not linger.
        retry = str(STREAMS_RETRY_AFTER).encode()
        return await respond(send, 503, body, [(b"retry-after", retry), (b"connection", b"close")])
    if events is None:
        return await respond(send, status, NOT_FOUND if status == 404 else b"")

    async def stream() -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in STREAM_HEADERS]
                + SECURITY_HEADERS,
            }
        )
        async for text in events:
            await send({"type": "http.response.body", "body": text, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    streaming = asyncio.ensure_future(stream())
    watching = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in (streaming, watching):
            if not task.done():
                task.cancel()  # the stream's subscription is released on cancel
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
    finally:
        events.close()  # its slot under the caps, even if it never began to stream
