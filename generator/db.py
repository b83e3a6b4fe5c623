"""Database helpers that the web and the worker share."""

import contextlib
import functools
import logging
import os
import time

from django.db import OperationalError

logger = logging.getLogger(__name__)


def retry_on_locked(func, attempts: int = 8):
    """Retry a write that SQLite refused with "database is locked" past its busy timeout."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for attempt in range(attempts):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if "locked" not in str(exc).lower() or attempt == attempts - 1:
                    raise
                logger.warning("Database locked in %s; retrying", func.__name__)
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


def make_sqlite_files_private(sender, connection, **kwargs) -> None:
    """connection_created: the SQLite file and its WAL files are the service user's only."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    for path in (name, name + "-wal", name + "-shm"):
        with contextlib.suppress(OSError):  # in memory, or not there yet
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
