"""Retention: delete old sessions with their files, find orphaned files.

The media quota (SD_MEDIA_QUOTA_GB) is watched in disk.py, with the disks' other floors.

`manage.py prune` and the worker's hourly chore (SD_KEEP_DAYS) delete through
`services.session_delete`, so files go with their rows exactly as when a user
deletes one. An orphan is a file under media/ that no row names (left by a
crash between writing a file and saving its row); young files are never
orphans, since a job may be about to save the row that names them.
"""

import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

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


def file_size(name: str) -> int:
    try:
        return (Path(settings.MEDIA_ROOT) / name).stat().st_size
    except OSError:
        return 0


def session_bytes(session) -> int:
    return sum(
        file_size(getattr(session, field).name) for field in FILE_FIELDS if getattr(session, field)
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


def orphans() -> list[Path]:
    """Files under media/images, previews and inputs that no session names and are old enough."""
    named = set()
    for field in FILE_FIELDS:
        named.update(GenerationSession.objects.exclude(**{field: ""}).values_list(field, flat=True))
    root = Path(settings.MEDIA_ROOT)
    now = time.time()
    found = []
    for folder in MEDIA_FOLDERS:
        for path in (root / folder).rglob("*"):
            if not path.is_file():
                continue
            name = path.relative_to(root).as_posix()
            try:
                young = now - path.stat().st_mtime < ORPHAN_MIN_AGE
            except OSError:
                continue
            if name not in named and not young:
                found.append(path)
    return found
