"""The Server-Sent Events stream of one session, built from the hub's snapshots.

Event ids carry the client's position: `(run * STEPS + step + 1) * COUNT + n`,
where `run` counts the times the job went back to the queue after a worker took
it (a lost or stopped worker), `step` is the highest step of that run the client
has been sent (-1 before any) and `n` counts the messages since (COUNT - 1 marks
the final message). Each part only grows within the one before it, so ids only
grow, whatever the order of messages, and a reconnect with Last-Event-ID
resumes without repeating anything, or gets 204 after the end.
"""

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..ownership import Viewer
from .hub import ProgressHub, get_hub
from .snapshots import Snapshot, messages_between

RETRY_MS = 2000
KEEPALIVE = b": keepalive\n\n"
COUNT = 100_000
"""Room for messages between two steps (queue places, phases, previews)."""
STEPS = 100_000
"""Room for the steps of one run."""
FINAL = COUNT - 1
TERMINAL_TYPES = {"complete", "error", "cancelled"}
STREAM_HEADERS = (
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: pass each message on at once
    # Compression buffers: an encoding already set keeps GZipMiddleware (and
    # most proxies) away from the stream.
    ("Content-Encoding", "identity"),
)


def format_message(event_id: int, data: dict) -> str:
    return f"id: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(frozen=True)
class Position:
    """Where a client stands in a stream, read from an event id."""

    run: int = 0
    step: int = -1
    count: int = 0

    @classmethod
    def from_event_id(cls, value: str | None) -> "Position | None":
        try:
            event_id = int(value)
        except (TypeError, ValueError):
            return None
        if event_id < 0:
            return None
        run, step = divmod(event_id // COUNT, STEPS)
        return cls(run=run, step=step - 1, count=event_id % COUNT)

    @property
    def finished(self) -> bool:
        return self.count == FINAL

    def after(self, data: dict) -> "Position":
        """The position once `data` is sent."""
        if data["type"] in TERMINAL_TYPES:
            return Position(self.run, self.step, FINAL)
        if data["type"] == "restarted":
            return Position(data["restarts"], -1, 0)
        if data["type"] == "progress" and data["current_step"] > self.step:
            return Position(self.run, data["current_step"], 0)
        return Position(self.run, self.step, min(self.count + 1, FINAL - 1))

    @property
    def event_id(self) -> int:
        return (self.run * STEPS + self.step + 1) * COUNT + self.count


@functools.lru_cache(maxsize=4096)
def render(
    previous: Snapshot | None, current: Snapshot, position: Position
) -> tuple[bytes, Position]:
    """The bytes a client at `position` is sent for a change, and its new position.

    Streams that watch the same session from the same point get the same
    bytes: cached, they are built once per change, not once per stream.
    """
    text = []
    if current.restarts > position.run:
        # The job went back to the queue: its steps count again from 0.
        data = {
            "type": "restarted",
            "restarts": current.restarts,
            "reason": current.restart_reason or "lost worker",
        }
        position = position.after(data)
        text.append(format_message(position.event_id, data))
        previous = None
    for data in messages_between(previous, current):
        # Within a run steps never go backwards for a client, not even when
        # it reconnects.
        if data["type"] == "progress" and data["current_step"] <= position.step:
            continue
        position = position.after(data)
        text.append(format_message(position.event_id, data))
    return "".join(text).encode(), position


class ProgressStream:
    """A stream's events and the slot it holds under the caps. `close()` gives the slot back:
    the servers call it when the response ends, even one that never began to stream."""

    def __init__(self, events: AsyncIterator[bytes], slot):
        self.events = events
        self.slot = slot

    def __aiter__(self):
        return self.events

    def close(self) -> None:
        self.slot.release()


class Cursor:
    """What one client has been sent: the last snapshot and its position."""

    __slots__ = ("previous", "position")

    def __init__(self, previous: Snapshot, position: Position):
        self.previous, self.position = previous, position

    def advance(self, snapshot: Snapshot) -> bytes:
        """The bytes that bring the client to `snapshot`, counted as sent."""
        text, self.position = render(self.previous, snapshot, self.position)
        self.previous = snapshot
        return text

    def writer(self, write_body):
        """A `Subscription.write_now` that sends a change with `write_body` (a
        `connections.BodyWriter`): the last message is left to the stream's task,
        which ends the response after it."""

        def write_now(snapshot: Snapshot) -> bool:
            if snapshot.is_finished:
                return False
            text, position = render(self.previous, snapshot, self.position)
            if text and not write_body(text):
                return False
            self.previous, self.position = snapshot, position
            return True

        return write_now


async def session_events(
    hub: ProgressHub,
    session_id,
    first: Snapshot,
    resume: Position | None = None,
    slot=None,
    write_body=None,
) -> AsyncIterator[bytes]:
    """`connected`, then a message per change until the session finishes.

    With `resume` (a reconnect) the client already has `connected` and every
    step up to `resume.step`, so neither is sent again. With `write_body` (see
    `connections.BodyWriter`) the hub writes changes itself while the client
    keeps up; what this yields goes out through the server's `send`.
    """
    position = resume or Position(run=first.restarts)

    opening = f"retry: {RETRY_MS}\n"
    if resume is None:
        position = position.after({"type": "connected"})
        opening += format_message(
            position.event_id, {"type": "connected", "session_id": str(session_id)}
        )
    try:
        text, position = render(None, first, position)
        yield opening.encode() + text
        if first.is_finished:
            return
        cursor = Cursor(first, position)
        async with hub.subscribe(session_id) as subscription:
            if write_body is not None:
                subscription.write_now = cursor.writer(write_body)
            while True:
                snapshot = await subscription.next_snapshot()
                if subscription.closed:  # the server is shutting down
                    return
                subscription.busy = True
                if snapshot is None:
                    yield KEEPALIVE
                else:
                    text = cursor.advance(snapshot)
                    if text:
                        subscription.spoke = True
                        yield text
                    if snapshot.is_finished:
                        return
                subscription.busy = False
    finally:
        if slot is not None:
            slot.release()


STREAMS_RETRY_AFTER = 10
"""Seconds a client refused a stream (503) waits; the page polls meanwhile."""


async def open_stream(
    session_id, last_event_id: str | None, viewer: Viewer, address: str = "", write_body=None
):
    """What GET /api/progress/<id> answers: (404, None), (204, None), (503, reason) when
    SD_MAX_STREAMS are open, or (200, the stream).

    One decision for both servers of the URL, the Django view and the lean
    ASGI route. Someone else's session is as absent as a missing one.
    `write_body`: see `session_events`.
    """
    hub = get_hub()
    first = await hub.read_one(session_id)
    if first is None or not viewer.can_see(first.owner_id, first.owner_key):
        return 404, None
    resume = Position.from_event_id(last_event_id)
    if resume is not None and resume.finished:
        # The client has the final message: 204 tells EventSource to stop reconnecting.
        return 204, None
    slot = hub.reserve(viewer.holder() or f"address:{address}")
    if isinstance(slot, str):
        return 503, slot
    return 200, ProgressStream(
        session_events(hub, session_id, first, resume, slot, write_body), slot
    )
