"""Log context (which worker, which session) and the JSON log format (SD_LOG_FORMAT=json).

The worker sets `worker_id` once and `session_id` around each job; every log
record made meanwhile, by any library, carries them. The JSON formatter writes
one object per line: time, level, logger, message, and those two where known.
"""

import contextvars
import json
import logging
from contextlib import contextmanager
from datetime import UTC, datetime

worker_id = contextvars.ContextVar("worker_id", default=None)
session_id = contextvars.ContextVar("session_id", default=None)
_process_worker_id: str | None = None
"""The worker id for threads that did not inherit the context (the sender, the heartbeat)."""


def set_worker(value: str) -> None:
    global _process_worker_id
    _process_worker_id = value
    worker_id.set(value)


@contextmanager
def job(value):
    token = session_id.set(str(value))
    try:
        yield
    finally:
        session_id.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record):
        record.worker_id = worker_id.get() or _process_worker_id
        record.session_id = getattr(record, "session_id", None) or session_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("session_id", "worker_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
