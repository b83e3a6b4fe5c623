"""One database reader per web process, shared by every open progress stream.

Each open stream subscribes to its session id. While any stream is open, the
hub reads all watched sessions in one query per tick and hands each stream the
snapshots that changed. Database load therefore does not grow with the number
of open streams, and no stream holds a thread or a connection of its own.
"""

import asyncio
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from django.conf import settings
from django.db import connections

from .models import Status
from .progress import Snapshot, read_snapshots

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

# All database reads of the hubs go through this one thread, so a web process
# holds at most one connection for its progress streams.
_db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-db")


def _read_and_release(session_ids, release: bool) -> dict:
    try:
        return read_snapshots(session_ids)
    except Exception:
        connections.close_all()  # a broken connection is replaced on the next tick
        raise
    finally:
        if release:
            connections.close_all()


class Subscription:
    def __init__(self, session_id):
        self.session_id = session_id
        self.queue: asyncio.Queue[Snapshot | None] = asyncio.Queue()

    async def next_snapshot(self, timeout: float) -> Snapshot | None:
        """The next changed snapshot; None when `timeout` passes with no change."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class ProgressHub:
    def __init__(self, interval: float):
        self.interval = interval
        self.subscribers: dict[object, set[Subscription]] = {}
        self.latest: dict[object, Snapshot] = {}
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def read_one(self, session_id) -> Snapshot | None:
        """The session's current snapshot, read through the hub's thread (None if absent)."""
        loop = asyncio.get_running_loop()
        release = not self.subscribers
        snapshots = await loop.run_in_executor(_db_thread, _read_and_release, [session_id], release)
        return snapshots.get(session_id)

    @asynccontextmanager
    async def subscribe(self, session_id):
        subscription = Subscription(session_id)
        self.subscribers.setdefault(session_id, set()).add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield subscription
        finally:
            watchers = self.subscribers.get(session_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self.subscribers[session_id]
                    self.latest.pop(session_id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.subscribers:
            watched = list(self.subscribers)
            try:
                snapshots = await loop.run_in_executor(
                    _db_thread, _read_and_release, watched, False
                )
                # A watched row that is gone was deleted: end its streams.
                snapshots.update({sid: DELETED for sid in watched if sid not in snapshots})
            except Exception:
                logger.exception("Progress hub read failed; retrying")
                snapshots = {}
            self.ticks += 1
            self._publish(snapshots)
            await asyncio.sleep(self.interval)
        # Idle: give the connection back until the next stream opens.
        await loop.run_in_executor(_db_thread, connections.close_all)

    def _publish(self, snapshots: dict) -> None:
        for session_id, snapshot in snapshots.items():
            if self.latest.get(session_id) == snapshot:
                continue
            self.latest[session_id] = snapshot
            for subscription in self.subscribers.get(session_id, ()):
                subscription.queue.put_nowait(snapshot)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProgressHub]" = (
    weakref.WeakKeyDictionary()
)


def get_hub() -> ProgressHub:
    """The hub of the running event loop (one per process under uvicorn)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ProgressHub(interval=settings.SD_PROGRESS_INTERVAL)
    return hub
