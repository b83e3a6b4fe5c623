"""PostgreSQL LISTEN/NOTIFY: workers announce each progress write, web processes wake at once.

On SQLite (and if the listening connection drops) the progress hub's poll is
the only path, so nothing here is needed for correctness, only for latency.
"""

import asyncio
import logging
import uuid

from django.db import connection, connections

logger = logging.getLogger(__name__)

CHANNEL = "sdsite_progress"


def notify_session_changed(session_id) -> None:
    """Tell listening web processes that this session's row changed (PostgreSQL only)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(session_id)])


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
