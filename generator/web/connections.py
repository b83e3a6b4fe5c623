"""uvicorn's HTTP protocol with the guards a public server needs (`--http` names it).

- Every request on a connection, the first and each kept-alive one after it, has
  SD_HEADER_TIMEOUT seconds in all to send its headers, from the connection (the
  first) or its first byte (the next ones); past that the connection is closed.
  uvicorn itself never times out a half-sent request (its keep-alive timer stops
  at the first byte), so sockets that open and trickle would pile up until the
  process runs out of file descriptors. (Idle keep-alive connections are
  uvicorn's `--timeout-keep-alive`; a body that comes too slowly is `body_limit`'s.)
- Near the process's file limit (`capacity.FileLimit`), a new connection gets a
  JSON 503 with Retry-After and is closed, so the process keeps the descriptors
  its database, files and logs need (without this, a flood of sockets made every
  request fail with "Too many open files").
- A connection the server ends (a refusal, a 408, `Connection: close`) is closed
  without a reset: the server sends its answer, then its FIN, and reads and drops
  what the client still sends until the client closes too, for LINGER_SECONDS at
  most (nginx's lingering close). Closing a socket with unread input sends a reset,
  which can destroy the answer before the client reads it.

It also hands each request a way to write a chunk of a streaming body at once,
outside the ASGI `send` coroutine (the scope's `extensions["sdsite.write_body"]`,
a `BodyWriter`): the progress hub writes a change to a thousand streams in one
pass with it, instead of waking a thousand tasks to await `send` each.

    uvicorn sdsite.asgi:application --http generator.web.connections:GuardedHttpProtocol
"""

import logging

from django.conf import settings

from ..addresses import PEER
from .capacity import REQUESTS_TIMED_OUT, file_limit

try:  # the parser uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as UvicornProtocol

    BODY_WRITER = True  # `BodyWriter` mirrors this protocol's `send`
except ImportError:  # pragma: no cover - httptools is in requirements.txt
    from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornProtocol

    BODY_WRITER = False

logger = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
"""How long a connection the server closes waits for the client to close its side."""
FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 10\r\nconnection: close\r\ncontent-length: 76\r\n\r\n"
    b'{"message": "The server has as many connections open as it can; try again."}'
)


class LingeringTransport:
    """The connection's transport as uvicorn sees it, whose `close()` is a lingering close:
    what was written goes out, then a FIN; input is dropped until the client closes (the
    protocol's `eof_received` then closes the socket) or LINGER_SECONDS pass."""

    def __init__(self, transport, loop):
        self.raw = transport
        self.loop = loop
        self.lingering = False
        self.linger_timer = None
        # The transport's own, called as it is (the hub writes to a thousand streams a tick)
        # until the FIN, after which nothing more can go out.
        self.write = transport.write

    def __getattr__(self, name):
        return getattr(self.raw, name)

    @staticmethod
    def dropped(data) -> None:
        pass

    def is_closing(self) -> bool:
        return self.lingering or self.raw.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self.raw.can_write_eof():  # pragma: no cover - TCP can
            self.raw.close()
            return
        self.lingering = True
        self.write = self.dropped
        self.raw.write_eof()
        self.raw.resume_reading()
        self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.raw.close)

    def closed(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()


class GuardedHttpProtocol(UvicornProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(LingeringTransport(transport, self.loop))
        self.headers_due = None
        self.expect_headers()
        refused = file_limit.opened(len(self.connections))
        if refused:
            self.transport.write(FULL)
            if refused == "linger":
                self.transport.close()
            else:  # no descriptor to spare: at once
                self.transport.raw.close()

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # read and dropped while the connection closes
        super().data_received(data)

    def expect_headers(self) -> None:
        """Start the headers' deadline, unless one runs (the first request's, from the
        connection)."""
        if self.headers_due is None:
            self.headers_due = self.loop.call_later(
                settings.SD_HEADER_TIMEOUT, self.headers_overdue
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.expect_headers()  # a kept-alive connection's next request begins

    def on_headers_complete(self) -> None:
        if self.headers_due is not None:
            self.headers_due.cancel()
            self.headers_due = None
        super().on_headers_complete()
        # The connection's own peer, which uvicorn's --proxy-headers would replace in
        # `client` with a header's value: generator.addresses reads the client from it.
        self.scope.setdefault("extensions", {})[PEER] = self.client
        cycle = self.cycle
        if BODY_WRITER and cycle is not None and cycle.scope is self.scope:
            self.scope.setdefault("extensions", {})[WRITE_BODY] = BodyWriter(cycle)

    def headers_overdue(self) -> None:
        self.headers_due = None
        if not self.transport.is_closing():
            REQUESTS_TIMED_OUT.labels("headers").inc()
            self.transport.close()

    # Between requests nothing is unread or owed: these close at once, without lingering.
    def timeout_keep_alive_handler(self) -> None:
        self.transport.raw.close()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.raw.close()
        else:
            self.cycle.keep_alive = False

    def connection_lost(self, exc) -> None:
        if self.headers_due is not None:
            self.headers_due.cancel()
        self.transport.closed()
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
