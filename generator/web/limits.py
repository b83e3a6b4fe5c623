"""Limits per owner: how many jobs one may have queued or running, and how fast one may ask.

An owner is a user (logged in, or behind an API key), or an anonymous browser;
anonymous traffic is also counted per client address, so fresh cookies do not
reset it. Staff, and API keys marked unlimited, are exempt. Both limits answer
429 with a JSON error and Retry-After (api_errors), and neither ever slows
another owner.

The request rate uses django-ratelimit on the database cache, which every web
process shares (configure a Redis cache as `default` for heavy traffic).
"""

import hashlib

from django.conf import settings
from django.db import OperationalError, connection
from django_ratelimit.core import get_usage

from ..addresses import client_ip
from ..disk import database_write_failed
from ..models import GenerationSession

QUEUE_RETRY_AFTER = 10
"""Seconds to wait before asking again when the owner's queue is full."""


class TooManyRequests(Exception):
    """Answered with 429 and Retry-After."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def is_exempt(request) -> bool:
    key = getattr(request, "api_key", None)
    if key is not None:
        return key.unlimited or key.user.is_staff
    return request.user.is_authenticated and request.user.is_staff


def rate_key(group, request) -> str:
    key = getattr(request, "api_key", None)
    if key is not None:
        return f"user:{key.user_id}"
    if request.user.is_authenticated:
        return f"user:{request.user.pk}"
    return f"ip:{client_ip(request)}"


def check_rate(request) -> None:
    """Count this request against SD_RATE_LIMIT (e.g. "30/m"); raise when over it."""
    if not settings.SD_RATE_LIMIT or is_exempt(request):
        return
    usage = get_usage(
        request, group="sdsite:generate", key=rate_key, rate=settings.SD_RATE_LIMIT, increment=True
    )
    if usage and usage["limit"] == 0:
        # django-ratelimit's answer when the cache could not count (its table locked
        # or away): its disk full (a 507), or the database busy, a 503 to retry, not a 429.
        full = database_write_failed()
        if full is not None:
            raise full
        raise OperationalError("database is locked: the request rate could not be counted")
    if usage and usage["should_limit"]:
        raise TooManyRequests(
            f"Too many requests: the limit is {settings.SD_RATE_LIMIT} (SD_RATE_LIMIT); "
            f"try again in {max(1, int(usage['time_left']))} s.",
            retry_after=max(1, int(usage["time_left"])),
        )


def check_queue(request, owner: dict, count: int) -> None:
    """Refuse `count` more jobs when the owner would have over SD_MAX_QUEUED_PER_OWNER.

    Each image counts as a job (a batch of 4 is 4, as A1111 counts a batch's images).
    Runs inside the transaction that inserts the jobs (`session_create_batch`'s `admit`),
    holding the owner's lock from the count to the commit, so requests sent together
    cannot all count the same free places: SQLite's IMMEDIATE transactions (settings.py)
    take the write lock at BEGIN; PostgreSQL takes the owner's advisory locks here.
    """
    limit = settings.SD_MAX_QUEUED_PER_OWNER
    if not limit or is_exempt(request):
        return
    if not connection.in_atomic_block:
        raise RuntimeError("check_queue must run inside the transaction that queues the jobs")
    user = owner.get("owner")
    owner_id, owner_key = user.pk if user else None, owner.get("owner_key", "")
    address = client_ip(request) or None
    lock_owner(owner_id, owner_key, address)
    queued = GenerationSession.objects.unfinished()
    held = queued.of_queue_owner(owner_id, owner_key, address).count()
    if held + count <= limit:
        return
    holder = queue_holder(queued, owner_id, owner_key, address, held)
    jobs = f"{held} job{'s' if held != 1 else ''} queued or running"
    if count > 1 and held < limit:  # fewer images would pass
        what = f"{count} more would make {held + count}, and at most {limit} are allowed"
        instead = f"ask for at most {limit - held} or wait for one to finish"
        message = f"{holder} {jobs}; {what} (SD_MAX_QUEUED_PER_OWNER): {instead}."
    else:
        message = (
            f"{holder} {jobs} and may have at most {limit} (SD_MAX_QUEUED_PER_OWNER): "
            "wait for one to finish."
        )
    raise TooManyRequests(message, retry_after=QUEUE_RETRY_AFTER)


def queue_holder(queued, owner_id, owner_key: str, address: str | None, held: int) -> str:
    """Who holds the jobs a refusal counts, truly ("You have", "Your address ... has"):
    an anonymous browser is counted together with everything anonymous from its address."""
    if owner_id is not None or not address:
        return "You have"
    own = queued.filter(owner__isnull=True, owner_key=owner_key).count() if owner_key else 0
    if own == held:
        return "You have"
    from_address = queued.filter(owner__isnull=True, client_ip=address).count()
    if from_address == held:
        return f"Your address ({address}) has"
    return f"This browser and your address ({address}) have"


def lock_owner(owner_id, owner_key: str, address: str | None) -> None:
    """PostgreSQL: hold, until the transaction ends, the advisory locks of every name the
    owner is counted under (a user; an anonymous browser's key and its address), taken in
    one order so two owners that share a name never deadlock. Other owners never wait.
    SQLite needs none: the IMMEDIATE transaction holds the database's one write lock."""
    if connection.vendor != "postgresql":
        return
    if owner_id is not None:
        names = [f"user:{owner_id}"]
    else:
        names = [f"browser:{owner_key}" if owner_key else "", f"ip:{address}" if address else ""]
        names = [name for name in names if name] or ["nobody"]
    keys = sorted({advisory_key(name) for name in names})
    with connection.cursor() as cursor:
        for key in keys:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, in sdsite's own namespace."""
    digest = hashlib.blake2b(f"sdsite-queue:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
