"""Worker liveness: a row per worker, refreshed from a thread of its own.

The thread beats while the main thread loads models or runs long steps, and
each beat also recovers the sessions of workers that stopped beating.
"""

import logging
import os
import socket
import threading

from django.db import connections
from django.utils import timezone

from .models import WorkerRecord
from .queue import recover_lost_sessions, retry_on_locked

logger = logging.getLogger(__name__)


@retry_on_locked
def register_worker(worker_id: str, serves: dict) -> None:
    """`serves`: {"models": [...], "backends": [...]}, empty lists meaning any."""
    WorkerRecord.objects.update_or_create(
        id=worker_id,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "served_models": "\n".join(serves.get("models") or []),
            "served_backends": ",".join(serves.get("backends") or []),
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
    from django.conf import settings

    cutoff = timezone.now() - timezone.timedelta(seconds=settings.SD_WORKER_LEASE)
    return WorkerRecord.objects.filter(last_seen_at__gte=cutoff)


def why_waiting(session) -> str | None:
    """For a queued session, a sentence when no live worker can take it; else None."""
    workers = list(live_workers())
    if not workers:
        return "No worker is running: start one with `python manage.py runworker`."
    if not any(worker.serves(session.model, session.backend) for worker in workers):
        return (
            f"No running worker serves model {session.model!r} with the {session.backend} backend."
        )
    return None


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
