"""Worker liveness: a row per worker, refreshed from a thread of its own.

The thread beats while the main thread loads models or runs long steps, and
each beat also recovers the sessions of workers that stopped beating. A worker
judges others only by a lease during which it could beat on time itself: when
the database held everyone's beats (a long SQLite lock, an outage), the silence
of the others says nothing about them, and nobody is taken for dead.
"""

import logging
import os
import socket
import threading
import time
import uuid

from django.db import connections
from django.utils import timezone

from ..db import OutageLog, retry_on_locked
from ..models import WorkerRecord
from .claims import recover_lost_sessions

logger = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@retry_on_locked
def register_worker(worker_id: str, serves: dict, ready: bool = True) -> None:
    """`serves`: {"models": [...], "backends": [...]}, empty lists meaning any.

    `ready=False` says the worker is starting: registered before it imports its
    heavy libraries, so the page says "a worker is starting", not "no worker".
    """
    WorkerRecord.objects.update_or_create(
        id=worker_id,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "served_models": "\n".join(serves.get("models") or []),
            "served_backends": ",".join(serves.get("backends") or []),
            "loaded_models": "\n".join(serves.get("loaded") or []),
            "ready": ready,
            "last_seen_at": timezone.now(),
        },
    )


@retry_on_locked
def beat(worker_id: str, serves: dict) -> None:
    if not WorkerRecord.objects.filter(id=worker_id).update(last_seen_at=timezone.now()):
        # Another worker took this one for dead (a pause longer than the lease)
        # and removed the row: come back.
        register_worker(worker_id, serves)


@retry_on_locked
def unregister_worker(worker_id: str) -> None:
    WorkerRecord.objects.filter(id=worker_id).delete()


class Heartbeat(threading.Thread):
    def __init__(self, worker_id: str, serves: dict, lease_seconds: float, max_attempts: int):
        super().__init__(name="heartbeat", daemon=True)
        self.worker_id = worker_id
        self.serves = serves
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.interval = lease_seconds / 3
        self.outages = OutageLog("Heartbeat")
        self._stop_event = threading.Event()
        # The worker registered and recovered just now: as good as a lease of beats.
        self.last_beat = time.monotonic()
        self.beats_on_time_since = self.last_beat - lease_seconds

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                self.beat_and_recover()
        finally:
            connections.close_all()

    def beat_and_recover(self) -> None:
        try:
            beat(self.worker_id, self.serves)
            now = time.monotonic()
            if now - self.last_beat > 2 * self.interval:  # the database held this beat up
                self.beats_on_time_since = now
            self.last_beat = now
            if now - self.beats_on_time_since >= self.lease_seconds:
                recover_lost_sessions(
                    lease_seconds=self.lease_seconds, max_attempts=self.max_attempts
                )
        except Exception as exc:  # a missed beat is retried next time; the worker goes on
            self.outages.failed(exc)
        else:
            self.outages.succeeded()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
