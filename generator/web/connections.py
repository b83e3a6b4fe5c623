"""uvicorn's HTTP protocol with two guards a public server needs (`--http` names it).

- A connection that has not sent its request's headers within SD_HEADER_TIMEOUT
  seconds is closed: uvicorn itself never times out a half-sent request, so
  sockets that open and trickle (or say nothing) would pile up until the process
  runs out of file descriptors. (Idle keep-alive connections are uvicorn's
  `--timeout-keep-alive`; a body that stalls is `body_limit`'s.)
- When the open connections pass 80 % of the process's file limit (`ulimit -n`,
  systemd's LimitNOFILE), a warning says so, once a minute; within RESERVED_FILES
  of the limit, a new connection gets a 503 and is closed at once, so the
  process keeps the descriptors its database, files and logs need (without
  this, a flood of sockets made every request fail with "Too many open files").

It also hands each request a way to write a chunk of a streaming body at once,
outside the ASGI `send` coroutine (the scope's `extensions["sdsite.write_body"]`,
a `BodyWriter`): the progress hub writes a change to a thousand streams in one
pass with it, instead of waking a thousand tasks to await `send` each.

    uvicorn sdsite.asgi:application --http generator.web.connections:GuardedHttpProtocol
"""

import logging
import resource
import time

from django.conf import settings

from ..addresses import PEER

try:  # the parser uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as UvicornProtocol

    BODY_WRITER = True  # `BodyWriter` mirrors this protocol's `send`
except ImportError:  # pragma: no cover - httptools is in requirements.txt
    from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornProtocol

    BODY_WRITER = False

logger = logging.getLogger(__name__)

NEAR_FILE_LIMIT = 0.8
WARN_EVERY_SECONDS = 60.0
RESERVED_FILES = 64
"""Descriptors kept for the database, model and media files, and the logs (an eighth of a
smaller limit)."""
FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 10\r\nconnection: close\r\ncontent-length: 76\r\n\r\n"
    b'{"message": "The server has as many connections open as it can; try again."}'
)


class GuardedHttpProtocol(UvicornProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.headers_due = self.loop.call_later(settings.SD_HEADER_TIMEOUT, self.headers_overdue)
        if file_limit.opened(len(self.connections)):
            transport.write(FULL)
            transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The connection's own peer, which uvicorn's --proxy-headers would replace in
        # `client` with a header's value: generator.addresses reads the client from it.
        self.scope.setdefault("extensions", {})[PEER] = self.client
        cycle = self.cycle
        if BODY_WRITER and cycle is not None and cycle.scope is self.scope:
            self.scope.setdefault("extensions", {})[WRITE_BODY] = BodyWriter(cycle)

    def headers_overdue(self) -> None:
        # `cycle` is set once a request's headers are in.
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.headers_due.cancel()
        super().connection_lost(exc)


WRITE_BODY = "sdsite.write_body"


class BodyWriter:
    """Writes one chunk of a response body now, as uvicorn's `send` of
    `{"type": "http.response.body", "body": body, "more_body": True}` would.

    Only while that is all `send` would do at once: the response has started,
    chunked, not ended, and the client keeps up. When the socket's buffer is
    past uvicorn's high-water mark (`send` would wait for it to drain) or the
    client is gone, it writes nothing and answers False: the caller sends the
    chunk through `send` instead, which waits for a slow client.
    """

    __slots__ = ("cycle",)

    # The hub writes the same bytes to every stream at the same point: framed once.
    _framed: tuple[bytes, bytes] = (b"", b"")

    def __init__(self, cycle):
        self.cycle = cycle

    def __call__(self, body: bytes) -> bool:
        cycle = self.cycle
        if (
            cycle.flow.write_paused
            or cycle.disconnected
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.scope["method"] == "HEAD"
        ):
            return False
        last, framed = BodyWriter._framed
        if body is not last:
            # uvicorn's chunk framing (httptools_impl.RequestResponseCycle.send).
            framed = b"%x\r\n%b\r\n" % (len(body), body)
            BodyWriter._framed = (body, framed)
        cycle.transport.write(framed)
        return True


class FileLimit:
    """Warns when the open connections near the process's file descriptor limit."""

    def __init__(self):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = None if soft == resource.RLIM_INFINITY else soft
        self.warned_at = -WARN_EVERY_SECONDS

    def opened(self, connections: int) -> bool:
        """Count a new connection in; True when there is no room for it."""
        if self.limit is None or connections < NEAR_FILE_LIMIT * self.limit:
            return False
        now = time.monotonic()
        if now - self.warned_at >= WARN_EVERY_SECONDS:
            self.warned_at = now
            logger.warning(
                "%d connections open, near this process's file limit of %d (ulimit -n, "
                "systemd's LimitNOFILE): past it new connections fail. Raise the limit, or "
                "lower SD_MAX_STREAMS and uvicorn's --limit-concurrency (docs/deploy.md).",
                connections,
                self.limit,
            )
        return connections > self.limit - min(RESERVED_FILES, self.limit // 8)


file_limit = FileLimit()
