"""Worker liveness: a row per worker, refreshed from a thread of its own.

The thread beats while the main thread loads models or runs long steps, and
each beat also recovers the sessions of workers that stopped beating.
"""

import logging
import os
import socket
import threading
import uuid

from django.db import connections
from django.utils import timezone

from .models import Status, WorkerRecord
from .queue import recover_lost_sessions, retry_on_locked

WORKER_LOST_WAITING = (
    "The worker running this job stopped answering; the job will be retried when a worker "
    "is available."
)

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


def live_workers():
    return WorkerRecord.objects.alive()


START_WORKER = "`.venv/bin/python manage.py runworker`"
"""The command that starts a worker after `make run`'s setup (the page shows it as code)."""


def why_waiting(session) -> str | None:
    """Why a session is not moving, in a sentence; None when nothing is wrong.

    For a queued one: no live worker can take it. For a running one: its worker
    stopped answering (its heartbeat is older than the lease).
    """
    if session.status == Status.RUNNING:
        alive = WorkerRecord.objects.alive().filter(pk=session.worker_id)
        if not session.worker_id or alive.exists():
            return None
        return WORKER_LOST_WAITING
    if session.status != Status.PENDING:
        return None
    workers = [w for w in live_workers() if w.serves(session.model, session.backend)]
    if any(worker.ready for worker in workers):
        return None
    if workers:
        return "A worker is starting (loading its libraries); the job begins when it is ready."
    if live_workers().exists():
        return (
            f"No running worker serves model {session.model!r} with the {session.backend} backend."
        )
    return f"No worker is running: start one with {START_WORKER}."


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
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                self.beat_and_recover()
        finally:
            connections.close_all()

    def beat_and_recover(self) -> None:
        try:
            beat(self.worker_id, self.serves)
            recover_lost_sessions(lease_seconds=self.lease_seconds, max_attempts=self.max_attempts)
        except Exception:  # a missed beat is retried next time; the worker goes on
            logger.exception("Heartbeat failed")
            connections.close_all()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
