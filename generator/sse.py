"""The Server-Sent Events stream of one session, built from the hub's snapshots."""

import json
from collections.abc import AsyncIterator

from django.conf import settings

from .hub import ProgressHub
from .progress import Snapshot, messages_between

RETRY_MS = 2000


def format_message(event_id: int, data: dict) -> str:
    return f"id: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


KEEPALIVE = ": keepalive\n\n"


async def session_events(
    hub: ProgressHub, session_id, first: Snapshot, keepalive: float | None = None
) -> AsyncIterator[str]:
    """`connected`, then a message per change until the session finishes."""
    keepalive = settings.SD_KEEPALIVE_SECONDS if keepalive is None else keepalive
    event_id = 0

    def message(data: dict) -> str:
        nonlocal event_id
        event_id += 1
        return format_message(event_id, data)

    yield f"retry: {RETRY_MS}\n" + message({"type": "connected", "session_id": str(session_id)})
    for data in messages_between(None, first):
        yield message(data)
    if first.is_finished:
        return
    previous = first
    async with hub.subscribe(session_id) as subscription:
        while True:
            snapshot = await subscription.next_snapshot(timeout=keepalive)
            if snapshot is None:
                yield KEEPALIVE
                continue
            for data in messages_between(previous, snapshot):
                yield message(data)
            previous = snapshot
            if snapshot.is_finished:
                return
