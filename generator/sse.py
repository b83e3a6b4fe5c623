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
    highest_step = -1

    def messages(previous: Snapshot | None, current: Snapshot):
        nonlocal event_id, highest_step
        for data in messages_between(previous, current):
            if data["type"] == "progress":
                # A session re-queued after a lost worker restarts at step 0;
                # the client's bar stays where it was until the rerun passes it.
                if data["current_step"] < highest_step:
                    continue
                highest_step = data["current_step"]
            event_id += 1
            yield format_message(event_id, data)

    event_id += 1
    yield f"retry: {RETRY_MS}\n" + format_message(
        event_id, {"type": "connected", "session_id": str(session_id)}
    )
    for text in messages(None, first):
        yield text
    if first.is_finished:
        return
    previous = first
    async with hub.subscribe(session_id) as subscription:
        while True:
            snapshot = await subscription.next_snapshot(timeout=keepalive)
            if snapshot is None:
                yield KEEPALIVE
                continue
            for text in messages(previous, snapshot):
                yield text
            previous = snapshot
            if snapshot.is_finished:
                return
