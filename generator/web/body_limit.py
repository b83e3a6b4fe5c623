"""Refuse request bodies over the limit while they stream, in front of every route.

Django spools a whole body to disk before any view runs, and a chunked body
(no Content-Length) has no size to check up front. This ASGI layer answers 413
as soon as a declared Content-Length is over the limit, or as soon as the bytes
received pass it, so at most the limit is ever read, on any URL, the lean
progress route included.
"""

import json

from django.conf import settings


class BodyTooLarge(Exception):
    pass


def _message(limit: int) -> bytes:
    text = f"The request body is larger than the limit of {limit / 1024 / 1024:g} MB."
    return json.dumps({"message": text, "errors": {"__all__": [text]}}).encode()


async def _refuse(send, limit: int) -> None:
    body = _message(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
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
                return await _refuse(send, most)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > most:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, most)

    return limited
