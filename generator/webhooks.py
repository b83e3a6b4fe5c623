"""Webhooks: tell a `callback_url` when its session ends, signed, retried from the database.

The web checks a callback URL when the job is queued (`check_callback_url`):
http or https, a host that `SD_WEBHOOK_HOSTS` lists, and, once resolved, no
loopback, private or link-local address unless the list names that address.
A worker's sender thread (`deliver_due`) posts to the ended sessions whose
delivery is due, and checks the resolved address again before it connects (a
name may resolve elsewhere by then), connecting to the very address it checked.

Delivery state lives on the session row (attempts, next attempt, delivered),
so a restarted worker loses nothing, and a row is leased for the length of one
attempt (a conditional update) so two workers never post it twice at once.
"""

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
from datetime import timedelta
from fnmatch import fnmatch
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import F, Q
from django.utils import timezone

from .models import FINISHED_STATUSES, GenerationSession

logger = logging.getLogger(__name__)

TIMEOUT = 10.0
"""Seconds to connect and to wait for the receiver's answer."""
SIGNATURE_HEADER = "X-Sdsite-Signature"


def allowed_entries() -> tuple[list[str], list]:
    """SD_WEBHOOK_HOSTS as (host name patterns, IP networks)."""
    names, networks = [], []
    for entry in settings.SD_WEBHOOK_HOSTS:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.append(entry.lower())
    return names, networks


def _addresses(host: str, port: int) -> list:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def checked_address(url: str):
    """(scheme, host, port, path, address to connect to) of an allowed URL, else ValidationError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Must be an http:// or https:// URL.")
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValidationError("The port is not a number.") from None
    names, networks = allowed_entries()
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    listed_name = literal is None and any(fnmatch(host, pattern) for pattern in names)
    if not listed_name and not (literal and any(literal in net for net in networks)):
        raise ValidationError(
            f"Callbacks may only go to the hosts in SD_WEBHOOK_HOSTS; {host} is not one."
        )
    try:
        addresses = [literal] if literal else _addresses(host, port)
    except OSError:
        raise ValidationError(f"The host {host} does not resolve.") from None
    for address in addresses:
        # A listed name may still not point into this server's own network,
        # unless the operator listed that network too.
        if not address.is_global and not any(address in net for net in networks):
            raise ValidationError(
                f"{host} resolves to {address}, a private, loopback or link-local address "
                "that SD_WEBHOOK_HOSTS does not list."
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port, path, addresses[0]


def check_callback_url(url: str) -> str:
    """The URL if a webhook may go there (the form's check); ValidationError otherwise."""
    if not settings.SD_WEBHOOK_HOSTS:
        raise ValidationError("Webhooks are off on this server (SD_WEBHOOK_HOSTS is empty).")
    checked_address(url)
    return url


def payload(session: GenerationSession, base_url: str = "") -> dict:
    image_url = session.image_url
    return {
        "session_id": str(session.pk),
        "status": session.status,
        "image_url": base_url + image_url if image_url else None,
        "error": session.error or None,
        "parameters": session.parameter_values(),
        "finished_at": session.finished_at.isoformat() if session.finished_at else None,
    }


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now."""

    def __init__(self, host, port, address, **kwargs):
        super().__init__(host, port, **kwargs)
        self._address = str(address)

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, address, **kwargs):
        super().__init__(host, port, context=ssl.create_default_context(), **kwargs)
        self._address = str(address)

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict) -> int:
    """POST to an allowed URL (checked again now); the HTTP status, or OSError/ValidationError."""
    scheme, host, port, path, address = checked_address(url)
    kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = kind(host, port, address, timeout=TIMEOUT)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65536)
        return response.status
    finally:
        connection.close()


def backoff(attempts: int) -> timedelta:
    """Wait before the next attempt: 2, 4, 8, ... seconds, at most an hour."""
    return timedelta(seconds=min(3600, 2**attempts))


def due():
    """Ended sessions whose webhook is neither delivered nor given up, and is due now."""
    return GenerationSession.objects.filter(
        Q(webhook_next_at__isnull=True) | Q(webhook_next_at__lte=timezone.now()),
        status__in=FINISHED_STATUSES,
        webhook_delivered_at__isnull=True,
        webhook_attempts__lt=settings.SD_WEBHOOK_ATTEMPTS,
    ).exclude(callback_url="")


def deliver_due(limit: int = 20) -> int:
    """Post every due webhook (at most `limit`); how many were delivered."""
    delivered = 0
    for session_id in due().values_list("pk", flat=True)[:limit]:
        delivered += deliver(session_id)
    return delivered


def deliver(session_id) -> bool:
    """One attempt for one session, if no other sender holds it; whether it was delivered."""
    now = timezone.now()
    lease = now + timedelta(seconds=TIMEOUT * 3)
    # The lease: only the sender whose update matched the due row posts it.
    taken = (
        due()
        .filter(pk=session_id)
        .update(webhook_next_at=lease, webhook_attempts=F("webhook_attempts") + 1)
    )
    if not taken:
        return False
    session = GenerationSession.objects.get(pk=session_id)
    body = json.dumps(payload(session, settings.SD_PUBLIC_URL), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "sdsite-webhook/1"}
    if settings.SD_WEBHOOK_SECRET:
        headers[SIGNATURE_HEADER] = signature(body, settings.SD_WEBHOOK_SECRET)
    try:
        status = post(session.callback_url, body, headers)
        problem = None if 200 <= status < 300 else f"The receiver answered HTTP {status}."
    except ValidationError as error:
        problem = error.messages[0]
    except OSError as error:
        problem = f"Could not reach the receiver: {error.strerror or error}."
    if problem is None:
        GenerationSession.objects.filter(pk=session_id).update(
            webhook_delivered_at=timezone.now(), webhook_error=""
        )
        logger.info("Webhook for session %s delivered", session_id)
        return True
    attempts = session.webhook_attempts
    gives_up = attempts >= settings.SD_WEBHOOK_ATTEMPTS
    GenerationSession.objects.filter(pk=session_id).update(
        webhook_next_at=timezone.now() + backoff(attempts), webhook_error=problem[:500]
    )
    logger.warning(
        "Webhook for session %s failed (attempt %d of %d%s): %s",
        session_id,
        attempts,
        settings.SD_WEBHOOK_ATTEMPTS,
        ", giving up" if gives_up else "",
        problem,
    )
    return False
