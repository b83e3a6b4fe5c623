"""What one web process may hold open, from its file limit, and the refusals past it.

Every connection is a file descriptor, and the process has as many as its file
limit (`ulimit -n`, systemd's LimitNOFILE; 1024 in a login shell or under systemd
by default). Of those:

- RESERVED_FILES (an eighth of a smaller limit) stay for the database, the model
  and media files and the logs. Below them, half as many again are kept for the
  refusals: past `FileLimit.connections`, a new connection is answered 503
  (`connections.FULL`) and closed without a reset (a lingering close, which holds
  its descriptor until the client closes, for two seconds at most); past
  `FileLimit.hard`, where no descriptor is left to linger with, it is closed at once.
- Progress streams, which stay open for minutes, get half of the connections by
  default (at most DEFAULT_MAX_STREAMS), and never more than three quarters
  whatever SD_MAX_STREAMS asks: the rest stays for /healthz, the page,
  POST /api/generate and the page's polling, whatever the streams do.

Every refusal is counted in /metrics (`sdsite_streams_refused_total{reason}`,
`sdsite_connections_refused_total`) and logged: the first at once, then at most
once every WARN_EVERY_SECONDS, with how many there were since.
"""

import logging
import resource
import time
from collections import Counter as Tally

from prometheus_client import Counter

logger = logging.getLogger(__name__)

NEAR_FILE_LIMIT = 0.8
"""Past this share of the admitted connections, a warning (once a minute)."""
WARN_EVERY_SECONDS = 60.0
RESERVED_FILES = 64
"""Descriptors kept for the database, model and media files, and the logs (an eighth of a
smaller limit)."""
DEFAULT_MAX_STREAMS = 2000
"""The default stream cap where the file limit allows more (the hub is measured up to it)."""
STREAMS_DEFAULT_SHARE = 0.5
STREAMS_MOST_SHARE = 0.75
"""The share of the admitted connections that streams take by default, and at most."""

STREAMS_REFUSED = Counter(
    "sdsite_streams_refused",
    "Progress streams answered 503 (the page follows by polling), by the cap they met: "
    "process (SD_MAX_STREAMS and the file limit) or owner (SD_MAX_STREAMS_PER_OWNER).",
    ["reason"],
)
CONNECTIONS_REFUSED = Counter(
    "sdsite_connections_refused",
    "Connections answered 503 at once: the process was near its file limit.",
)
REQUESTS_TIMED_OUT = Counter(
    "sdsite_requests_timed_out",
    "Requests whose headers (closed) or body (408) came too slowly.",
    ["part"],
)


class RateLimitedWarning:
    """Logs that something happened: the first time at once, then at most once every
    `every` seconds, with how many times (by reason) since the last line."""

    def __init__(self, message: str, every: float = WARN_EVERY_SECONDS):
        self.message = message
        """Formatted with `count`, `seconds`, `reasons` and the keywords of `note`."""
        self.every = every
        self.logged_at: float | None = None
        self.since: Tally = Tally()

    def note(self, reason: str = "", **details) -> None:
        self.since[reason] += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < self.every:
            return
        seconds = 0.0 if self.logged_at is None else now - self.logged_at
        reasons = ", ".join(f"{reason or 'all'}: {n}" for reason, n in sorted(self.since.items()))
        logger.warning(
            self.message.format(
                count=self.since.total(), seconds=seconds, reasons=reasons, **details
            )
        )
        self.logged_at = now
        self.since.clear()


stream_refusals = RateLimitedWarning(
    "{count} progress stream(s) refused with a 503 in the last {seconds:.0f} s ({reasons}); "
    "their pages follow by polling. This process keeps at most {cap} streams open "
    "(SD_MAX_STREAMS, within its file limit of {limit}); sdsite_streams_refused_total counts "
    "them (docs/deploy.md)."
)
connection_refusals = RateLimitedWarning(
    "{count} connection(s) refused with a 503 in the last {seconds:.0f} s: {open} open, near "
    "this process's file limit of {limit} (ulimit -n, systemd's LimitNOFILE). Raise the limit "
    "(docs/deploy.md); sdsite_connections_refused_total counts them."
)


class FileLimit:
    """The process's file limit, and what it admits: connections and progress streams."""

    def __init__(self, soft: int | None = None):
        if soft is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = None if soft == resource.RLIM_INFINITY else soft
        self.warned_at = -WARN_EVERY_SECONDS
        self._streams: dict[int | None, int] = {}

    @property
    def hard(self) -> int | None:
        """The most connections open at once: the limit less the files kept for the rest."""
        if self.limit is None:
            return None
        return self.limit - min(RESERVED_FILES, self.limit // 8)

    @property
    def connections(self) -> int | None:
        """The most connections admitted: below `hard`, room to refuse the next ones."""
        if self.limit is None:
            return None
        return self.hard - min(RESERVED_FILES, self.limit // 8) // 2

    def max_streams(self, requested: int | None) -> int:
        """The stream cap for SD_MAX_STREAMS = `requested` (None: unset) under this limit.

        Unset, half the admitted connections (at most DEFAULT_MAX_STREAMS); set, as asked,
        but never more than three quarters of them (with a warning, once)."""
        cap = self._streams.get(requested)
        if cap is not None:
            return cap
        room = self.connections
        if requested is None:
            cap = DEFAULT_MAX_STREAMS
            if room is not None:
                cap = min(cap, int(room * STREAMS_DEFAULT_SHARE))
        else:
            cap = max(requested, 0)
            most = None if room is None else int(room * STREAMS_MOST_SHARE)
            if most is not None and cap > most:
                logger.warning(
                    "SD_MAX_STREAMS=%d is more than this process's file limit of %d leaves "
                    "room for: %d streams at most, so that /healthz, the page and the API "
                    "still get connections. Raise the limit (ulimit -n, systemd's "
                    "LimitNOFILE; docs/deploy.md) for more.",
                    requested,
                    self.limit,
                    most,
                )
                cap = most
        self._streams[requested] = cap
        return cap

    def opened(self, connections: int) -> str | None:
        """Count a new connection in: None when admitted; "linger" when refused, with room to
        close it without a reset; "close" when refused, to close at once."""
        if self.limit is None or connections < NEAR_FILE_LIMIT * self.connections:
            return None
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
        if connections <= self.connections:
            return None
        CONNECTIONS_REFUSED.inc()
        connection_refusals.note(open=connections, limit=self.limit)
        return "linger" if connections <= self.hard else "close"


file_limit = FileLimit()
