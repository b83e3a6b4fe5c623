"""Refuse request bodies over the limit while they stream, in front of every route.

Django spools a whole body to disk before any view runs, and a chunked body
(no Content-Length) has no size to check up front. This ASGI layer answers 413
as soon as a declared Content-Length is over the limit, or as soon as the bytes
received pass it, so at most the limit is ever read, on any URL, the lean
progress route included. A body that stalls (no bytes for SD_BODY_TIMEOUT
seconds), or that comes too slowly (past its first SD_BODY_TIMEOUT seconds, under
SD_BODY_MIN_RATE bytes a second on average, as Apache's mod_reqtimeout counts),
is answered 408 and its connection closed: a body trickled a byte a second no
longer holds its socket for ever.
"""

import asyncio
import json

from django.conf import settings

from .capacity import REQUESTS_TIMED_OUT


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


def _message(text: str) -> bytes:
    return json.dumps({"message": text, "errors": {"__all__": [text]}}).encode()


def too_large(limit: int) -> tuple[int, bytes]:
    return 413, _message(
        f"The request body is larger than the limit of {limit / 1024 / 1024:g} MB."
    )


def too_slow(stalled: bool) -> tuple[int, bytes]:
    if stalled:
        return 408, _message(
            f"The request body stalled: no data for {settings.SD_BODY_TIMEOUT:g} s "
            "(SD_BODY_TIMEOUT)."
        )
    return 408, _message(
        f"The request body came too slowly: under {settings.SD_BODY_MIN_RATE:g} bytes/s "
        f"(SD_BODY_MIN_RATE) after its first {settings.SD_BODY_TIMEOUT:g} s (SD_BODY_TIMEOUT)."
    )


def body_deadline(started: float, received: int) -> float:
    """When a body of which `received` bytes came since `started` is too slow."""
    rate = settings.SD_BODY_MIN_RATE
    if rate <= 0:
        return float("inf")
    return started + settings.SD_BODY_TIMEOUT + received / rate


async def _refuse(send, answer: tuple[int, bytes]) -> None:
    status, body = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def limit_bodies(app, limit: int | None = None):
    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        most = limit if limit is not None else settings.SD_MAX_BODY_BYTES
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > most:
                return await _refuse(send, too_large(most))
        received = 0
        started = False
        body_done = False
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def counting_receive():
            nonlocal received, body_done
            if body_done:  # afterwards the app waits for the disconnect, as long as it likes
                return await receive()
            stall = settings.SD_BODY_TIMEOUT
            wait = min(stall, body_deadline(began, received) - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0))
            except TimeoutError:
                raise BodyTooSlow(wait >= stall) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > most:
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, too_large(most))
        except BodyTooSlow as slow:
            REQUESTS_TIMED_OUT.labels("body").inc()
            if not started:
                await _refuse(send, too_slow(stalled=slow.args[0]))

    return limited
