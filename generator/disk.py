"""Room on the disks: the database's (SQLite in DATA_DIR) and the media's (MEDIA_ROOT).

With the media in a bucket (SD_MEDIA_STORAGE=s3) the media disk has no floor here, and
SD_MEDIA_QUOTA_GB counts the objects under the bucket's prefix.

New work is refused while either disk has less free space than its floor
(SD_DB_MIN_FREE_MB, SD_MEDIA_MIN_FREE_MB) or media/ is over SD_MEDIA_QUOTA_GB: a
POST answers 507 before it writes anything, and a worker neither claims a job it
could not record nor denoises one whose image it could not save. A write that
still fails for want of room (SQLite's "database or disk is full", ENOSPC) is
told as what it is: users read which disk by its role, operators (logs,
/readyz from SD_METRICS_ALLOWED, /ops) also read its path.
"""

import contextlib
import errno
import shutil
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connections

from .media_storage import StorageUnavailable, is_remote, listing

FULL_BYTES = 1024 * 1024
"""Under this, a disk whose write just failed is taken for full, whatever its floor."""
FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded")
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
POSTGRES_DISK_FULL = "53100"
QUOTA_CACHE_SECONDS = 10.0
"""Seconds the size of media/ is reused before it is read again."""


class DiskFull(Exception):
    """A disk too full for new work (answered 507)."""

    def __init__(self, role: str, path: Path | None, free: int | None):
        self.role, self.path, self.free = role, path, free
        super().__init__(self.for_operator())

    @property
    def user_message(self) -> str:
        """What a user reads: the disk by its role, no path."""
        return f"The {self.role} disk is full: new jobs are refused until an operator frees space."

    @property
    def waiting_message(self) -> str:
        """Why queued jobs do not move (why_waiting): no worker can write their progress."""
        return f"The {self.role} disk is full: jobs wait until an operator frees space."

    def for_operator(self) -> str:
        """What logs, /readyz and /ops say: the path, and how much is free of what is needed."""
        where = f" ({self.path})" if self.path else ""
        if self.free is None:
            return f"The {self.role} disk{where} is full."
        return (
            f"The {self.role} disk{where} is full: {self.free / 1024**2:.1f} MB free, "
            f"under the {minimum_bytes(self.role) / 1024**2:g} MB that "
            f"{FLOOR_SETTINGS[self.role]} asks for."
        )


FLOOR_SETTINGS = {"database": "SD_DB_MIN_FREE_MB", "media": "SD_MEDIA_MIN_FREE_MB"}


def minimum_bytes(role: str) -> int:
    return int(getattr(settings, FLOOR_SETTINGS[role]) * 1024**2)


def folder_of(role: str) -> Path | None:
    """The folder whose disk holds the role's files; None for a database on a server."""
    if role == "media":  # in a bucket, the files take no room on this machine
        return None if is_remote() else Path(settings.MEDIA_ROOT)
    database = connections["default"].settings_dict
    name = str(database["NAME"])
    if database["ENGINE"] != "django.db.backends.sqlite3" or name.startswith((":", "file:")):
        return None  # PostgreSQL's disk is its server's; its errors still say when it is full
    return Path(name).parent


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def short_of_room(role: str, floor: int | None = None) -> DiskFull | None:
    """The role's disk as full when it has less free space than `floor` (its setting's)."""
    path = folder_of(role)
    if path is None:
        return None
    free = free_bytes(path)
    if free is None or free >= (minimum_bytes(role) if floor is None else floor):
        return None
    return DiskFull(role, path, free)


def room_problem(roles=("database", "media")) -> DiskFull | None:
    """The first of `roles` whose disk is under its floor."""
    for role in roles:
        full = short_of_room(role)
        if full is not None:
            return full
    return None


def media_bytes() -> int:
    """Bytes of all kept files: under MEDIA_ROOT, or under the bucket's prefix."""
    return sum(size for _, size, _ in listing())


class MediaQuotaExceeded(Exception):
    """New jobs are refused while media/ is over SD_MEDIA_QUOTA_GB (answered with a 507)."""


_usage = {"bytes": 0, "at": float("-inf")}
_usage_lock = threading.Lock()


def media_usage() -> int:
    """media_bytes(), read again at most every 10 s (a bucket's listing is many requests);
    a bucket away keeps the last size (its saves fail on their own, told)."""
    with _usage_lock:
        if time.monotonic() - _usage["at"] > QUOTA_CACHE_SECONDS:
            with contextlib.suppress(StorageUnavailable):
                _usage["bytes"] = media_bytes()
            _usage["at"] = time.monotonic()
        return _usage["bytes"]


def check_media_quota() -> None:
    """Raise MediaQuotaExceeded when media/ is over quota (the size is re-read every 10 s)."""
    quota = settings.SD_MEDIA_QUOTA_GB
    if not quota:
        return
    used = media_usage()
    if used > quota * 1024**3:
        raise MediaQuotaExceeded(
            f"The server's image storage is full ({used / 1024**3:.2f} GB of "
            f"{quota:g} GB): new jobs are refused until an operator frees space."
        )


def forget_media_usage() -> None:
    """Read the media size afresh at the next check (after a prune)."""
    _usage["at"] = float("-inf")


def media_problem() -> DiskFull | MediaQuotaExceeded | None:
    """Why no image could be saved now: the media disk under its floor, or media/ over quota."""
    try:
        check_media_quota()
    except MediaQuotaExceeded as exceeded:
        return exceeded
    return short_of_room("media")


def check_room() -> None:
    """Raise DiskFull or MediaQuotaExceeded (both 507) when new work must be refused."""
    problem = short_of_room("database") or media_problem()
    if problem is not None:
        raise problem


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for want of room: SQLite's SQLITE_FULL, PostgreSQL's disk_full, ENOSPC."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    if not isinstance(exc, DatabaseError | OSError):
        return False
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) == POSTGRES_DISK_FULL:
        return True
    return any(text in str(exc).lower() for text in FULL_MESSAGES)


def full_disk_of(exc: BaseException) -> DiskFull | None:
    """The disk a failed write ran out of room on (DiskFull), else None."""
    if isinstance(exc, DiskFull):
        return exc
    if not is_disk_full(exc):
        return None
    role = "database" if isinstance(exc, DatabaseError) else "media"
    path = folder_of(role)
    return DiskFull(role, path, free_bytes(path) if path else None)


def database_write_failed() -> DiskFull | None:
    """After a database write failed without saying why (the cache's): a full disk, if it is."""
    return short_of_room("database", floor=max(minimum_bytes("database"), FULL_BYTES))
