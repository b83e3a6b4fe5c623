"""Database helpers that the web and the worker share."""

import contextlib
import functools
import logging
import os
import time

from django.db import InterfaceError, OperationalError, connections

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


class OutageLog:
    """Logs a repeating task's failures: a database outage once (not once a try), anything
    else with its traceback each time."""

    def __init__(self, task: str):
        self.task = task
        self.missed = 0

    def failed(self, exc: BaseException) -> None:
        if not is_outage(exc):
            logger.exception("%s failed; retrying", self.task)
        elif not self.missed:
            logger.warning("%s: the database does not answer (%s)", self.task, type(exc).__name__)
        self.missed += 1
        connections.close_all()

    def succeeded(self) -> None:
        self.missed = 0


OUTAGE_ERRORS = (OperationalError, InterfaceError)
"""What a database that is away (restarting, unreachable, its pool exhausted) raises."""


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGE_ERRORS) and "locked" not in str(exc).lower()


def until_database_answers(func, *args, what: str = "", give_up=None, **kwargs):
    """Call `func` until the database answers: each outage is one warning line and one
    line when it ends; between tries the connection is dropped and the wait grows to 10 s.

    `give_up()` returning True ends the wait by re-raising (a stopping worker).
    """
    wait, since = 0.5, None
    while True:
        try:
            result = func(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            if not is_outage(exc) or (give_up is not None and give_up()):
                raise
            if since is None:
                since = time.monotonic()
                logger.warning(
                    "The database does not answer (%s): retrying %s until it does",
                    type(exc).__name__,
                    what or getattr(func, "__name__", "the call"),
                )
            with contextlib.suppress(Exception):
                connections.close_all()
            time.sleep(wait)
            wait = min(10.0, wait * 2)
            continue
        if since is not None:
            logger.warning("The database answers again after %.1f s", time.monotonic() - since)
        return result
