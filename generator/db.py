"""Database helpers that the web and the worker share."""

import functools
import logging
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
