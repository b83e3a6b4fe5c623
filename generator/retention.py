"""Retention: delete old sessions with their files, find orphaned files.

The media quota (SD_MEDIA_QUOTA_GB) is watched in disk.py, with the disks' other floors.

`manage.py prune` and the worker's hourly chore (SD_KEEP_DAYS) delete through
`services.session_delete`, so files go with their rows exactly as when a user
deletes one; with the media in a bucket, its objects go the same way. An orphan is a
file under media/ (or the bucket's prefix) that no row names (left by a
crash between writing a file and saving its row); young files are never
orphans, since a job may be about to save the row that names them.
"""

import time
from datetime import timedelta

from django.core.files.storage import default_storage
from django.utils import timezone

from .media_storage import listing, size_of
from .models import FINISHED_STATUSES, GenerationSession
from .services import session_delete

FILE_FIELDS = ("image", "preview", "init_image", "mask_image")
MEDIA_FOLDERS = ("images", "previews", "inputs")
ORPHAN_MIN_AGE = 3600.0
"""Seconds a file must have existed before a missing row makes it an orphan."""


def cutoff(days: float):
    return timezone.now() - timedelta(days=days)


def ended_before(before, statuses=FINISHED_STATUSES):
    """Ended sessions (of `statuses`) that ended, or were queued if they never started, before."""
    statuses = [s for s in statuses if s in FINISHED_STATUSES]  # never a queued or running one
    return GenerationSession.objects.filter(status__in=statuses, created_at__lt=before).exclude(
        finished_at__gte=before
    )


def session_bytes(session) -> int:
    return sum(
        size_of(getattr(session, field).name) for field in FILE_FIELDS if getattr(session, field)
    )


def prune(queryset, dry_run: bool = False, progress=None) -> tuple[int, int]:
    """Delete the sessions of `queryset` with their files: (rows, bytes freed)."""
    rows = freed = 0
    for session in queryset.iterator(chunk_size=500):
        freed += session_bytes(session)
        rows += 1
        if not dry_run:
            session_delete(session)
        if progress:
            progress(1)
    return rows, freed


def orphans() -> list[tuple[str, int]]:
    """(name, bytes) of the files under images/, previews/ and inputs/ (on disk or in the
    bucket) that no session names and are old enough."""
    named = set()
    for field in FILE_FIELDS:
        named.update(GenerationSession.objects.exclude(**{field: ""}).values_list(field, flat=True))
    now = time.time()
    return [
        (name, size)
        for name, size, modified in listing()
        if name.split("/", 1)[0] in MEDIA_FOLDERS
        and name not in named
        and now - modified >= ORPHAN_MIN_AGE
    ]


def delete_orphans(found) -> None:
    for name, _ in found:
        default_storage.delete(name)
