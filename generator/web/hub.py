"""One database reader per web process, shared by every open progress stream.

Each open stream subscribes to its session id. While any stream is open, the
hub reads all watched sessions in one query per tick and hands each stream the
snapshots that changed. A tick comes every SD_PROGRESS_INTERVAL seconds, or at
once when PostgreSQL notifies that a watched session changed. Database load
therefore does not grow with the number of open streams, and no stream holds a
thread or a connection of its own.

A stream that can write at once (under uvicorn, see `connections.BodyWriter`)
is handed each change in the hub's own pass over the watchers and writes it
there; the others, a slow client, and every stream's last message go through
the stream's queue and its task.
"""

import asyncio
import logging
import signal
import threading
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress

from django.conf import settings
from django.db import connections

from ..apikeys import users_of_keys
from ..models import Status
from ..notify import listen_for_changes, listener_conninfo
from ..ownership import Viewer, viewers_from_browser_sessions
from .capacity import STREAMS_REFUSED, file_limit, stream_refusals
from .metrics import HUB_TICK, PROGRESS_STREAMS
from .snapshots import Snapshot, read_snapshots

logger = logging.getLogger(__name__)

DELETED = Snapshot(
    status=Status.FAILED,
    phase="",
    current_step=0,
    total_steps=0,
    step_recorded_at=None,
    image_url=None,
    error="The session was deleted.",
)
SHUTDOWN = None
"""Put in a subscription's queue when the server stops: the stream ends cleanly."""
KEEPALIVE = "keepalive"
"""Put in the queue of a stream that said nothing for a keepalive interval."""

# All database reads of the hubs go through this one thread, so a web process
# holds at most one connection for its progress streams.
_db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-db")


def _on_db_thread(func, release: bool, *args):
    """Run `func` on the hub's thread; `release` gives the connection back afterwards."""
    try:
        return func(*args)
    except Exception:
        connections.close_all()  # a broken connection is replaced on the next tick
        raise
    finally:
        if release:
            connections.close_all()


class Subscription:
    __slots__ = ("session_id", "queue", "closed", "spoke", "busy", "write_now")

    def __init__(self, session_id):
        self.session_id = session_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.spoke = True
        """Whether the stream sent anything since the hub's last keepalive sweep."""
        self.busy = False
        """The stream's task is sending (and may be waiting for a slow client)."""
        self.write_now = None
        """The stream's way to send a snapshot from the hub's pass, if it has one:
        answers False when it cannot (then the snapshot goes to the queue)."""

    def deliver(self, snapshot: Snapshot) -> bool:
        """Hand the stream a changed snapshot: written at once (True) when the stream can
        and nothing is ahead of it, else queued for the stream's task (order is kept)."""
        if self.write_now is not None and not self.busy and self.queue.empty():
            try:
                if self.write_now(snapshot):
                    self.spoke = True
                    return True
            except Exception:  # this stream's trouble: its task meets it and ends
                logger.exception("Writing a progress stream failed")
                self.write_now = None
        self.queue.put_nowait(snapshot)
        return False

    async def next_snapshot(self) -> Snapshot | None:
        """The next changed snapshot; None when it is time for a keepalive, or the end."""
        # No timer per wait: with a thousand streams, arming and cancelling a
        # timeout for each message cost more than the rest of the fan-out.
        # The hub's keepalive sweep wakes idle streams instead.
        snapshot = await self.queue.get()
        if snapshot is SHUTDOWN:
            self.closed = True
        return None if snapshot is KEEPALIVE else snapshot


class StreamSlot:
    """One open stream's place under the caps; `release()` gives it back (once)."""

    __slots__ = ("hub", "holder", "held")

    def __init__(self, hub: "ProgressHub", holder: str):
        self.hub, self.holder, self.held = hub, holder, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.hub.release(self.holder)


class BatchedReads:
    """Reads by key through the hub's thread, batched: the keys asked for while one read
    runs are read together by the next, so a thousand streams opening at once cost a few
    queries, not a thousand."""

    def __init__(self, hub: "ProgressHub", read_many):
        self.hub = hub
        self.read_many = read_many
        """Called with a list of keys on the hub's thread; answers {key: value}."""
        self.waiting: dict[object, list[asyncio.Future]] = {}
        self.reading = False

    async def get(self, key):
        """The value for `key` (None if absent)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, []).append(future)
        if not self.reading:
            self.reading = True
            asyncio.get_running_loop().create_task(self._read())
        return await future

    async def _read(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, {}
                try:
                    # With no stream open, the hub holds no connection between reads.
                    found = await self.hub._query(
                        self.read_many, list(batch), release=not self.hub.subscribers
                    )
                except Exception as exc:
                    for futures in batch.values():
                        settle(futures, exception=exc)
                else:
                    for key, futures in batch.items():
                        settle(futures, result=found.get(key))
        finally:
            self.reading = False


def settle(futures, *, result=None, exception=None) -> None:
    for future in futures:
        if future.done():  # its stream closed while it waited
            continue
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


class ProgressHub:
    def __init__(self, interval: float, keepalive: float = 15.0):
        self.interval = interval
        self.keepalive = keepalive
        self.subscribers: dict[object, set[Subscription]] = {}
        self.holders: Counter = Counter()
        """Open streams per holder (a user, an anonymous browser, else an address)."""
        self.slots = 0
        """Open streams, counted from the moment they are let in (`reserve`)."""
        self.latest: dict[object, Snapshot] = {}
        self.reads = 0
        self.notifications = 0
        self.written = 0
        """Changes written to a stream in the hub's pass."""
        self.queued = 0
        """Changes left to a stream's task (no direct writer, a slow client, the end)."""
        self.stopped = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        # Streams that open together share their first reads: a query for all of them.
        self._first_reads = BatchedReads(self, read_snapshots)
        self._viewer_reads = BatchedReads(self, viewers_from_browser_sessions)
        self._key_reads = BatchedReads(self, users_of_keys)

    @property
    def stream_count(self) -> int:
        return sum(len(subs) for subs in self.subscribers.values())

    def stats(self) -> dict:
        return {
            "streams": self.stream_count,
            "sessions": len(self.subscribers),
            "reads": self.reads,
            "notifications": self.notifications,
            "written": self.written,
            "queued": self.queued,
            "listening": bool(self._listener and not self._listener.done()),
        }

    async def _query(self, func, *args, release: bool):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_db_thread, _on_db_thread, func, release, *args)

    async def read_one(self, session_id) -> Snapshot | None:
        """The session's current snapshot, read through the hub's thread (None if absent)."""
        return await self._first_reads.get(session_id)

    async def read_viewer(self, cookie_key: str | None) -> Viewer:
        """Who holds this browser session's cookie, read through the hub's thread."""
        if not cookie_key:
            return Viewer()
        return await self._viewer_reads.get(cookie_key)

    async def read_key_user(self, key: str) -> int | None:
        """The id of the user an active API key acts for (None for no such key), read
        through the hub's thread."""
        return await self._key_reads.get(key)

    def reserve(self, holder: str) -> "StreamSlot | str":
        """A slot for one more stream of `holder`, or why it cannot open (SD_MAX_STREAMS within
        the file limit, per process, and SD_MAX_STREAMS_PER_OWNER). Taken at once, with no
        wait between the check and the count: streams opening together cannot all slip under
        the cap. A refusal is counted in /metrics and logged (at most once a minute)."""
        cap = file_limit.max_streams(settings.SD_MAX_STREAMS)
        if self.slots >= cap:
            reason, refusal = (
                "process",
                ("This server has as many progress streams open as it allows (SD_MAX_STREAMS)."),
            )
        elif self.holders[holder] >= settings.SD_MAX_STREAMS_PER_OWNER:
            reason, refusal = (
                "owner",
                (
                    "You have as many progress streams open as allowed "
                    "(SD_MAX_STREAMS_PER_OWNER): close a tab, or follow by polling."
                ),
            )
        else:
            self.holders[holder] += 1
            self.slots += 1
            PROGRESS_STREAMS.inc()
            return StreamSlot(self, holder)
        STREAMS_REFUSED.labels(reason).inc()
        stream_refusals.note(reason, cap=cap, limit=file_limit.limit or "unlimited")
        return refusal

    def release(self, holder: str) -> None:
        PROGRESS_STREAMS.dec()
        self.slots -= 1
        self.holders[holder] -= 1
        if not self.holders[holder]:
            del self.holders[holder]

    @asynccontextmanager
    async def subscribe(self, session_id):
        subscription = Subscription(session_id)
        self.subscribers.setdefault(session_id, set()).add(subscription)
        if self.stopped:
            subscription.queue.put_nowait(SHUTDOWN)
        elif session_id in self.latest:
            # Another stream watches it already: start from the newest state
            # rather than wait for the next change.
            subscription.queue.put_nowait(self.latest[session_id])
        self._ensure_running()
        try:
            yield subscription
        finally:
            watchers = self.subscribers.get(session_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self.subscribers[session_id]
                    self.latest.pop(session_id, None)

    def wake(self, session_id) -> None:
        """A watched session changed (PostgreSQL NOTIFY): read now, not at the next tick."""
        self.notifications += 1
        if session_id in self.subscribers:
            self._wakeup.set()

    def shutdown(self) -> None:
        """End every open stream cleanly; the clients reconnect to a running server."""
        self.stopped = True
        for subscriptions in self.subscribers.values():
            for subscription in subscriptions:
                subscription.queue.put_nowait(SHUTDOWN)

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep_keepalives())
        self._ensure_listening(loop)

    def _ensure_listening(self, loop) -> None:
        if self._listener is None or self._listener.done():
            conninfo = listener_conninfo()
            if conninfo:
                self._listener = loop.create_task(listen_for_changes(conninfo, self.wake))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # A stream that opens while the hub winds down (a page reload: the old
        # stream closes, the new one opens) finds this task not yet done and
        # starts no other: so after winding down, look again.
        while self.subscribers:
            self._ensure_listening(loop)
            try:
                await self._read_while_watched()
            finally:
                if self._listener is not None:
                    self._listener.cancel()
                    self._listener = None
                # Idle: give the connection back until the next stream opens.
                await loop.run_in_executor(_db_thread, connections.close_all)

    async def _read_while_watched(self) -> None:
        while self.subscribers:
            watched = list(self.subscribers)
            self._wakeup.clear()
            try:
                with HUB_TICK.time():
                    snapshots = await self._query(read_snapshots, watched, release=False)
                self.reads += 1
                # A watched row that is gone was deleted: end its streams.
                snapshots.update({sid: DELETED for sid in watched if sid not in snapshots})
            except Exception:
                logger.exception("Progress hub read failed; retrying")
                snapshots = {}
            self._publish(snapshots)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.interval)

    async def _sweep_keepalives(self) -> None:
        """Every keepalive interval, wake the streams that said nothing during the last one."""
        while self.subscribers:
            await asyncio.sleep(self.keepalive)
            for subscriptions in list(self.subscribers.values()):
                for subscription in subscriptions:
                    if not subscription.spoke:
                        subscription.queue.put_nowait(KEEPALIVE)
                    subscription.spoke = False

    def _publish(self, snapshots: dict) -> None:
        for session_id, snapshot in snapshots.items():
            if self.latest.get(session_id) == snapshot:
                continue
            self.latest[session_id] = snapshot
            written = 0
            watchers = self.subscribers.get(session_id, ())
            for subscription in watchers:
                written += subscription.deliver(snapshot)
            self.written += written
            self.queued += len(watchers) - written


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProgressHub]" = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProgressHub:
    """The hub of the running event loop (one per process under uvicorn)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ProgressHub(
            interval=settings.SD_PROGRESS_INTERVAL, keepalive=settings.SD_KEEPALIVE_SECONDS
        )
        end_streams_on_exit_signals()
    return hub


def shutdown_hubs() -> None:
    """End the streams of every hub in this process."""
    for loop, hub in list(_hubs.items()):
        if not loop.is_closed():
            loop.call_soon_threadsafe(hub.shutdown)


_chained_signals: set[int] = set()


def end_streams_on_exit_signals() -> None:
    """On SIGTERM/SIGINT, end every progress stream before the server's own handler runs.

    Progress streams never end on their own while a job runs, and uvicorn waits
    for open responses before it stops: without this, a server with open
    streams would wait out its whole graceful-shutdown timeout, then cut them.
    This runs on the first stream, once the server has installed its handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if signum in _chained_signals or not callable(previous):
            continue

        def handler(signum, frame, previous=previous):
            shutdown_hubs()
            previous(signum, frame)

        signal.signal(signum, handler)
        _chained_signals.add(signum)
