"""Refuse request bodies over the limit while they stream, in front of every route.

Django spools a whole body to disk before any view runs, and a chunked body
(no Content-Length) has no size to check up front. This ASGI layer answers 413
as soon as a declared Content-Length is over the limit, or as soon as the bytes
received pass it, so at most the limit is ever read, on any URL, the lean
progress route included. A body that stalls (no bytes for SD_BODY_TIMEOUT
seconds) is answered 408 and its connection closed.
"""

import asyncio
import json

from django.conf import settings


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


def too_slow() -> tuple[int, bytes]:
    return 408, _message(
        f"The request body stalled: no data for {settings.SD_BODY_TIMEOUT:g} s (SD_BODY_TIMEOUT)."
    )


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

        async def counting_receive():
            nonlocal received, body_done
            if body_done:  # afterwards the app waits for the disconnect, as long as it likes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), settings.SD_BODY_TIMEOUT)
            except TimeoutError:
                raise BodyTooSlow from None
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
        except BodyTooSlow:
            if not started:
                await _refuse(send, too_slow())

    return limited
