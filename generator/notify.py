"""PostgreSQL LISTEN/NOTIFY: every change of a session row is announced (by a trigger, see
migration 0014), web processes wake at once; and a job entering the queue wakes idle
workers at once (by a trigger too, migration 0015: no caller sends it).

On SQLite (and if the listening connection drops) the progress hub's poll and the
workers' poll are the only paths, so nothing here is needed for correctness, only
for latency.
"""

import asyncio
import logging
import uuid

from django.db import connections

logger = logging.getLogger(__name__)

CHANNEL = "sdsite_progress"
"""Notified with a session's id by the database after each change of its row (a trigger)."""
QUEUE_CHANNEL = "sdsite_queue"
"""Notified by the database when a session enters the queue (new, re-queued, released,
recovered), as its transaction commits: idle workers claim."""


class QueueListener:
    """A worker's LISTEN on the queue channel, on a thread and a connection of its own.

    `wake` is set on each notification; `listening` tells whether notifications can
    arrive now (the worker polls while they cannot)."""

    def __init__(self, conninfo: str, wake):
        import threading

        self.conninfo = conninfo
        self.wake = wake
        self.listening = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="queue-listener", daemon=True)

    def start(self) -> "QueueListener":
        self.thread.start()
        return self

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self.listening.set()
                    self.wake.set()  # anything queued while it was away: look once
                    logger.info("Listening for new jobs")
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake.set()
            except Exception as exc:
                if self.listening.is_set():
                    logger.warning("Queue listener lost its connection (%s); polling", exc)
            self.listening.clear()
            self.wake.set()  # the worker goes back to polling
            self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def listener_conninfo() -> str | None:
    """psycopg connection parameters of the default database, or None when not PostgreSQL."""
    db = connections["default"]
    if db.vendor != "postgresql":
        return None
    from psycopg.conninfo import make_conninfo

    settings = db.settings_dict
    params = {
        "dbname": settings["NAME"],
        "user": settings["USER"],
        "password": settings["PASSWORD"],
        "host": settings["HOST"],
        "port": settings["PORT"],
    }
    for key, value in settings["OPTIONS"].items():
        if isinstance(value, str | int) and key not in {"pool", "server_side_binding"}:
            params[key] = value
    return make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


async def listen_for_changes(conninfo: str, on_change, retry_seconds: float = 1.0) -> None:
    """Call `on_change(session_id)` for every notification, reconnecting until cancelled."""
    import psycopg

    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                logger.info("Listening for progress notifications")
                async for notification in conn.notifies():
                    try:
                        on_change(uuid.UUID(notification.payload))
                    except ValueError:
                        continue
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Progress listener lost its connection; polling until it is back")
        await asyncio.sleep(retry_seconds)
