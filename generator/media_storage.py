"""Where kept files live: this machine's media/ folder, or an S3-compatible bucket.

Everything reaches the files through Django's storage API (`default_storage`, set by
`STORAGES` from SD_MEDIA_STORAGE); this module holds what the two kinds differ in:

- `StorageUnavailable`, what the bucket's failures become (`s3_storage.MediaS3Storage`,
  django-storages' backend, tells them: "media storage (S3) unavailable: <short reason>");
- `listing()` (name, size, modified) of every kept file, for the quota and retention;
- `storage_problem()`, the bucket's reachability for /readyz (cached briefly);
- the site's media settings recorded by the web (`record_site_settings`) and compared by
  each worker at its start (`settings_mismatch`): machines that disagree on the storage,
  bucket, prefix or SECRET_KEY would each see files the others cannot.
"""

import logging
import os
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connections
from django.utils.crypto import salted_hmac

from .models import SiteRecord

logger = logging.getLogger(__name__)

STORAGE_CHECK_SECONDS = 5.0
"""Seconds a bucket check's answer is reused by /readyz."""
RETRY_FIRST_PAUSE = 0.25
RETRY_LONGEST_PAUSE = 8.0


def is_remote() -> bool:
    """Files in a bucket rather than on this machine's disk."""
    return settings.SD_MEDIA_STORAGE == "s3"


class StorageUnavailable(OSError):
    """The media storage cannot be reached or refused the request (told, never raw)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"media storage (S3) unavailable: {reason}")

    def __str__(self) -> str:
        return self.args[0]


_last_failure = {"at": float("-inf")}


def note_unavailable() -> None:
    """The storage just failed a request (`s3_storage` calls it)."""
    _last_failure["at"] = time.monotonic()


def recently_unavailable(within: float = STORAGE_CHECK_SECONDS) -> bool:
    """The storage failed a request in the last `within` seconds: what can wait (a live
    preview for the progress streams) is not asked for meanwhile."""
    return time.monotonic() - _last_failure["at"] < within


def listing():
    """(name, size, modified as Unix time) of every kept file, in the bucket or media/."""
    if is_remote():
        yield from default_storage.objects()
        return
    root = Path(settings.MEDIA_ROOT)
    for folder, _, files in os.walk(root):
        for file in files:
            path = Path(folder) / file
            try:
                stat = path.stat()
            except OSError:  # gone meanwhile
                continue
            yield path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime


def size_of(name: str) -> int:
    """The file's size in bytes; 0 if it is gone."""
    try:
        return default_storage.size(name)
    except StorageUnavailable:
        raise
    except OSError:
        return 0


def save_with_retries(save, *, deadline: float | None = None):
    """`save()`, tried again with growing pauses while the storage is away, until
    SD_MEDIA_RETRY_SECONDS (or `deadline`, a time.monotonic(), if sooner) has passed;
    then its StorageUnavailable."""
    give_up = time.monotonic() + settings.SD_MEDIA_RETRY_SECONDS
    if deadline is not None:
        give_up = min(give_up, deadline)
    pause = RETRY_FIRST_PAUSE
    while True:
        try:
            return save()
        except StorageUnavailable as exc:
            left = give_up - time.monotonic()
            if left <= 0:
                raise
            logger.warning("%s; trying again in %.1f s", exc, min(pause, left))
            time.sleep(min(pause, left))
            pause = min(pause * 2, RETRY_LONGEST_PAUSE)


_checked = {"at": float("-inf"), "problem": None}
_check_lock = threading.Lock()


def storage_problem() -> str | None:
    """Why the bucket cannot be used now (None: it answers, or the files are local).
    Asked at most every STORAGE_CHECK_SECONDS; each check is one HEAD of the bucket."""
    if not is_remote():
        return None
    with _check_lock:
        if time.monotonic() - _checked["at"] < STORAGE_CHECK_SECONDS:
            return _checked["problem"]
    try:
        default_storage.check()
        problem = None
    except StorageUnavailable as exc:
        problem = str(exc)
    with _check_lock:
        _checked.update(at=time.monotonic(), problem=problem)
    return problem


# --- The same settings on every machine ----------------------------------------------

SITE_SETTINGS_KEY = "media"
MUST_MATCH = {
    "storage": "SD_MEDIA_STORAGE",
    "bucket": "SD_S3_BUCKET",
    "prefix": "SD_S3_PREFIX",
    "secret_key": "SECRET_KEY",
}
"""What every machine of a site must agree on, and the setting that says it."""


def site_settings() -> dict:
    """This process's media settings as the machines compare them (the key as a digest)."""
    remote = is_remote()
    return {
        "storage": settings.SD_MEDIA_STORAGE,
        "bucket": settings.SD_S3_BUCKET if remote else "",
        "prefix": settings.SD_S3_PREFIX if remote else "",
        "secret_key": salted_hmac("sdsite.site-settings", "secret_key").hexdigest()[:16],
    }


def record_site_settings() -> None:
    """The web's settings, for workers to compare at their start (a web process's start)."""
    try:
        SiteRecord.objects.update_or_create(
            key=SITE_SETTINGS_KEY, defaults={"value": site_settings()}
        )
    except Exception as exc:  # the web serves on (its /readyz tells a database away)
        logger.warning("Could not record the media settings: %s", type(exc).__name__)
    finally:
        connections.close_all()


def settings_mismatch() -> str | None:
    """Why this worker must not run beside the web that recorded its settings (one line
    naming the settings that differ), or None (they agree, or no web recorded any)."""
    record = SiteRecord.objects.filter(key=SITE_SETTINGS_KEY).first()
    if record is None:
        return None
    ours = site_settings()
    differing = [MUST_MATCH[name] for name in MUST_MATCH if record.value.get(name) != ours[name]]
    if not differing:
        return None
    shown = [
        f"{MUST_MATCH[name]}={ours[name]!r} here, {record.value.get(name)!r} on the web"
        for name in MUST_MATCH
        if name != "secret_key" and record.value.get(name) != ours[name]
    ]
    if "SECRET_KEY" in differing:
        shown.append("SECRET_KEY differs from the web's")
    return (
        "This worker's media settings disagree with the web's: "
        + "; ".join(shown)
        + ". Set them the same on every machine (docs/deploy.md)."
    )
