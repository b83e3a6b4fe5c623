"""uvicorn's HTTP protocol with two guards a public server needs (`--http` names it).

- A connection that has not sent its request's headers within SD_HEADER_TIMEOUT
  seconds is closed: uvicorn itself never times out a half-sent request, so
  sockets that open and trickle (or say nothing) would pile up until the process
  runs out of file descriptors. (Idle keep-alive connections are uvicorn's
  `--timeout-keep-alive`; a body that stalls is `body_limit`'s.)
- When the open connections pass 80 % of the process's file limit (`ulimit -n`,
  systemd's LimitNOFILE), a warning says so, once a minute, before accept()
  starts failing.

    uvicorn sdsite.asgi:application --http generator.web.connections:GuardedHttpProtocol
"""

import logging
import resource
import time

from django.conf import settings

try:  # the parser uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as UvicornProtocol
except ImportError:  # pragma: no cover - httptools is in requirements.txt
    from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornProtocol

logger = logging.getLogger(__name__)

NEAR_FILE_LIMIT = 0.8
WARN_EVERY_SECONDS = 60.0


class GuardedHttpProtocol(UvicornProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.headers_due = self.loop.call_later(settings.SD_HEADER_TIMEOUT, self.headers_overdue)
        file_limit.opened(len(self.connections))

    def headers_overdue(self) -> None:
        # `cycle` is set once a request's headers are in.
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.headers_due.cancel()
        super().connection_lost(exc)


class FileLimit:
    """Warns when the open connections near the process's file descriptor limit."""

    def __init__(self):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = None if soft == resource.RLIM_INFINITY else soft
        self.warned_at = -WARN_EVERY_SECONDS

    def opened(self, connections: int) -> None:
        if self.limit is None or connections < NEAR_FILE_LIMIT * self.limit:
            return
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


file_limit = FileLimit()
