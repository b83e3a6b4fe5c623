"""The client's address: the connection's peer, or behind a trusted proxy the address it forwards.

One rule for every use of an address (the per-owner limits, the request rate,
django-axes's login throttle, the private routes `/metrics` and
`/api/stats/progress`, the owner of a new job):

- a peer outside SD_TRUSTED_PROXIES (the default: every peer) is the client,
  whatever X-Forwarded-For it sends;
- a trusted peer's X-Forwarded-For is walked from the right, skipping the hops
  that are themselves trusted proxies; the first untrusted hop is the client (a
  proxy appends the address it saw, so whatever a client wrote itself stays on
  the left and is never reached);
- a hop that is not an IP address ends the walk: the nearest trusted hop is the
  client, and the header is logged (once a minute at most). It never raises.

`with_client_address` applies it once per request, in the ASGI application,
and writes the result into the scope's `client`: Django's REMOTE_ADDR and the
lean progress route see the client, never a proxy's address or a header's
garbage. It reads the real peer that `connections.GuardedHttpProtocol` keeps
in the scope, so uvicorn's own `--proxy-headers` (on by default, trusting
loopback) cannot put a header's value in its place.
"""

import functools
import ipaddress
import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)

PEER = "sdsite.peer"
"""The scope extension that holds the connection's own (host, port), set by the protocol."""
MAX_HOPS = 16
"""X-Forwarded-For hops walked at most; past them the nearest trusted hop is the client."""
MAX_HEADER = 4096
"""Characters of X-Forwarded-For read at most (its right end, where proxies append)."""
WARN_EVERY_SECONDS = 60.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """Addresses and networks ("10.0.0.0/8", "::1") as networks; sdsite.settings checked them."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A bare IPv4 or IPv6 address (an IPv4-mapped one as IPv4), or None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:  # "fe80::1%eth0": no place in a database column
            return None
        if address.ipv4_mapped:
            return address.ipv4_mapped
    return address


def within(address, nets: tuple[Network, ...]) -> bool:
    return any(address in net for net in nets)


class _Warnings:
    """Logs a malformed header at most once every WARN_EVERY_SECONDS, with how many it skipped."""

    def __init__(self):
        self.last = float("-inf")
        self.skipped = 0

    def malformed(self, peer: str, header: str) -> None:
        now = time.monotonic()
        if now - self.last < WARN_EVERY_SECONDS:
            self.skipped += 1
            return
        more = f" ({self.skipped} more since the last warning)" if self.skipped else ""
        self.last, self.skipped = now, 0
        logger.warning(
            "Ignored a malformed X-Forwarded-For from trusted proxy %s: %r%s",
            peer,
            header[:200],
            more,
        )


warnings = _Warnings()


def forwarded_client(peer: str, forwarded_for: str, trusted: tuple[Network, ...]) -> str:
    """The client's address for a request from `peer` that carries X-Forwarded-For
    `forwarded_for` ("" when none), given the trusted proxies; "" when unknown."""
    address = parse_ip(peer or "")
    if address is None:
        return ""
    if not forwarded_for or not within(address, trusted):
        return str(address)
    hops = forwarded_for[-MAX_HEADER:].split(",")[-MAX_HOPS:]
    for hop in reversed(hops):
        forwarded = parse_ip(hop)
        if forwarded is None:
            warnings.malformed(str(address), forwarded_for)
            break
        address = forwarded
        if not within(address, trusted):
            break
    return str(address)


def with_client_address(app):
    """ASGI middleware: the scope's `client` becomes the client's address (see above)."""

    async def client_address_app(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("extensions", {}).get(PEER) or scope.get("client") or ("", 0)
            forwarded_for = ",".join(
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"x-forwarded-for"
            )
            trusted = networks(tuple(settings.SD_TRUSTED_PROXIES))
            client = forwarded_client(peer[0], forwarded_for, trusted)
            scope = dict(scope, client=(client, peer[1]) if client else None)
        return await app(scope, receive, send)

    return client_address_app


def client_ip(request) -> str:
    """The client's address of a Django request ("" when unknown): REMOTE_ADDR, which
    `with_client_address` has set; checked again for servers that run without it."""
    address = parse_ip(request.META.get("REMOTE_ADDR") or "")
    return str(address) if address is not None else ""


def private_allowed(request) -> bool:
    """Whether the client may read the private routes (/metrics, /api/stats/progress)."""
    address = parse_ip(client_ip(request))
    return address is not None and within(address, networks(tuple(settings.SD_METRICS_ALLOWED)))


def anonymous_api_allowed(address: str) -> bool:
    """Whether a client at `address` may use the API routes without a key: SD_API_AUTH=off,
    and the client within SD_API_ANONYMOUS_FROM where that lists any networks."""
    if settings.SD_API_AUTH:
        return False
    if not settings.SD_API_ANONYMOUS_FROM:
        return True
    parsed = parse_ip(address or "")
    return parsed is not None and within(parsed, networks(tuple(settings.SD_API_ANONYMOUS_FROM)))
