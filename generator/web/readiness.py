"""Readiness, for /readyz and the operators: can this process serve now?"""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.db import DatabaseError, connection, connections
from django.db.migrations.executor import MigrationExecutor

from ..disk import room_problem
from ..media_storage import is_remote, storage_problem

READINESS_TIMEOUT = 1.0
"""Seconds the database has to answer a readiness probe."""
_readiness_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")
STORAGE_TIMEOUT = 2.0
"""Seconds the media bucket has to answer a readiness probe."""
_storage_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness-storage")


def readiness_problem(detailed: bool = True) -> str | None:
    """Why this process cannot serve (the database does not answer within a second,
    migrations are missing, a disk is under its floor, the media bucket does not answer);
    None when it can. `detailed`: a
    full disk's path and figures (operators), else the disk by its role only.

    The check runs on a small thread pool of its own, so a database that hangs
    (a pool waiting for a connection) makes the probe fail in a second rather
    than hang the probe, and stuck checks never pile up beyond the pool.
    """
    full = room_problem()
    if full is not None:
        return full.for_operator() if detailed else full.user_message
    try:
        problem = _readiness_checks.submit(_readiness_check).result(timeout=READINESS_TIMEOUT)
    except FutureTimeout:
        return f"The database did not answer within {READINESS_TIMEOUT:g} s."
    return problem or storage_readiness()


def storage_readiness() -> str | None:
    """The media bucket (SD_MEDIA_STORAGE=s3) does not answer: why, else None. Its check
    (one HEAD, reused for a few seconds) has a thread of its own, so a slow bucket never
    holds up the database's."""
    if not is_remote():
        return None
    try:
        return _storage_checks.submit(storage_problem).result(timeout=STORAGE_TIMEOUT)
    except FutureTimeout:
        return f"media storage (S3) unavailable: no answer within {STORAGE_TIMEOUT:g} s"


def _readiness_check() -> str | None:
    try:
        executor = MigrationExecutor(connection)
        missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        return f"The database does not answer: {type(error).__name__}."
    finally:
        connections.close_all()
    if missing:
        return f"{len(missing)} migration(s) not applied: run manage.py migrate."
    return None
