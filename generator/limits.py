"""Limits per owner: how many jobs one may have queued or running, and how fast one may ask.

An owner is a user (logged in, or behind an API key), or an anonymous browser;
anonymous traffic is also counted per client address, so fresh cookies do not
reset it. Staff, and API keys marked unlimited, are exempt. Both limits answer
429 with a JSON error and Retry-After (api_errors), and neither ever slows
another owner.

The request rate uses django-ratelimit on the database cache, which every web
process shares (configure a Redis cache as `default` for heavy traffic).
"""

from django.conf import settings
from django.db import OperationalError
from django_ratelimit.core import get_usage

from .disk import database_write_failed
from .models import GenerationSession

QUEUE_RETRY_AFTER = 10
"""Seconds to wait before asking again when the owner's queue is full."""


class TooManyRequests(Exception):
    """Answered with 429 and Retry-After."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


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
    """Refuse `count` more jobs when the owner would have over SD_MAX_QUEUED_PER_OWNER."""
    limit = settings.SD_MAX_QUEUED_PER_OWNER
    if not limit or is_exempt(request):
        return
    user = owner.get("owner")
    held = (
        GenerationSession.objects.unfinished()
        .of_queue_owner(user.pk if user else None, owner.get("owner_key", ""), client_ip(request))
        .count()
    )
    if held + count > limit:
        jobs = f"{held} job{'s' if held != 1 else ''} queued or running"
        if count > 1 and held < limit:  # fewer images would pass
            what = f"{count} more would make {held + count}, and you may have at most {limit}"
            instead = f"ask for at most {limit - held} or wait for one to finish"
            message = f"You have {jobs}; {what} (SD_MAX_QUEUED_PER_OWNER): {instead}."
        else:
            message = (
                f"You have {jobs} and may have at most {limit} (SD_MAX_QUEUED_PER_OWNER): "
                "wait for one to finish."
            )
        raise TooManyRequests(message, retry_after=QUEUE_RETRY_AFTER)
