"""Database helpers that the web and the worker share."""

import contextlib
import functools
import logging
import os
import time

from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import sql

from .disk import full_disk_of

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
            logger.warning("%s: %s", self.task, outage_text(exc))
        self.missed += 1
        connections.close_all()

    def succeeded(self) -> None:
        self.missed = 0


OUTAGE_ERRORS = (OperationalError, InterfaceError)
"""What a database that is away (restarting, unreachable, its pool exhausted) raises."""


def outage_text(exc: BaseException) -> str:
    """What is wrong, for the log: a full disk with its path, else a database away."""
    full = full_disk_of(exc)
    if full is not None:
        return f"{full.for_operator()[:-1]}; nothing can be written"
    return f"The database does not answer ({type(exc).__name__})"


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
                    "%s: retrying %s until it can",
                    outage_text(exc),
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


class CompiledUpdates:
    """`queryset.update(**values)` for one fixed queryset, each kind of update compiled once.

    The ORM spends about 0.4 ms of Python building and compiling an UPDATE, twice what
    running it costs. A running job writes one per step, from its progress writer's
    thread, and that Python holds the GIL the denoising loop needs: compiled once per
    set of field names (and which of them are None, which the SQL spells as NULL), a
    write only prepares its values, each as its field does for the ORM. Anything else
    (an expression such as F(), SQL whose parameters are not one per value) goes
    through the ORM as before.
    """

    def __init__(self, queryset):
        self.queryset = queryset
        self.compiled: dict[tuple, tuple | None] = {}

    def update(self, **values) -> int:
        if any(hasattr(value, "resolve_expression") for value in values.values()):
            return self.queryset.update(**values)
        shape = tuple((name, values[name] is None) for name in values)
        if shape not in self.compiled:
            self.compiled[shape] = self.compile(values)
        if self.compiled[shape] is None:
            return self.queryset.update(**values)
        statement, fields, where_params = self.compiled[shape]
        connection = connections[self.queryset.db]
        params = [field.get_db_prep_save(values[name], connection) for name, field in fields]
        with (
            transaction.mark_for_rollback_on_error(using=self.queryset.db),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [*params, *where_params])
            return cursor.rowcount

    def compile(self, values: dict) -> tuple | None:
        """The SQL, the (name, field) pairs whose values it takes first, and the WHERE's
        parameters."""
        query = self.queryset.query.chain(sql.UpdateQuery)
        query.add_update_values(values)
        statement, params = query.get_compiler(self.queryset.db).as_sql()
        fields = [
            (name, field)
            for name, (field, _, value) in zip(values, query.values, strict=False)
            if value is not None
        ]
        if (
            query.related_updates
            or len(query.values) != len(values)
            or statement.count("%s") != len(params)
            or len(params) < len(fields)
        ):
            return None
        return statement, fields, params[len(fields) :]
