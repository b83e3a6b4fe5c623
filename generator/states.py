"""A job's states and the only code that changes them.

Every transition is one queryset verb: it names the states it starts from, writes
its fields with one compare-and-set `update()` (so two writers racing for a row
cannot both win) and says whether it happened. A worker's writes are fenced by
its claim token: a worker that lost its claim (recovered by another worker,
released at shutdown) changes nothing. No other module writes `status`
(tests/test_states.py scans the source for it).

Entering the queue wakes idle workers: on PostgreSQL a trigger (migration 0015)
sends `NOTIFY sdsite_queue` for every row that becomes pending, when its
transaction commits; on SQLite workers poll. No caller announces it by hand.

This module imports Django only: models.py builds on it.
"""

import uuid

from django.db import models
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    PENDING = "pending", _("Pending")
    """Queued, waiting for a worker."""
    RUNNING = "running", _("Running")
    """Claimed by a worker, which is loading the model or denoising."""
    COMPLETED = "completed", _("Completed")
    """The image is saved."""
    FAILED = "failed", _("Failed")
    """Stopped by an error; `error` says why."""
    CANCELLED = "cancelled", _("Cancelled")
    """Stopped on request."""


FINISHED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
REQUEUEABLE = (Status.FAILED, Status.CANCELLED)

FRESH_PROGRESS = {
    "current_step": 0,
    "step_recorded_at": None,
    "step_seconds": [],
    "eta_seconds": None,
}
"""A job's progress fields before its first step."""

REQUEUE_RESET = {
    "status": Status.PENDING,
    "claim_token": None,
    "worker_id": "",
    "phase": "",
    "started_at": None,
    **FRESH_PROGRESS,
}
"""What every way back to the queue (requeue, release, expire) resets: no claim, no progress."""

PROGRESS_FIELDS = frozenset(
    {"phase", "current_step", "total_steps", "step_recorded_at", "step_seconds"}
    | {"eta_seconds", "preview", "preview_step", "attempts"}
)
"""What a running job's worker writes between its claim and its end (`progress`)."""

# Why a job went back to the queue; the page says "Restarted after a <reason>."
WORKER_STOPPED = "worker shut down"
WORKER_LOST = "lost worker"

COLD_LOSSES_PER_ATTEMPT = 5
"""Losses of a worker before denoising began that a job survives, per attempt it has."""


class StateQuerySet(models.QuerySet):
    """The transitions (see docs/architecture.md, "A job's states")."""

    # Reads.
    def pending(self):
        return self.filter(status=Status.PENDING)

    def running(self):
        return self.filter(status=Status.RUNNING)

    def unfinished(self):
        return self.filter(status__in=(Status.PENDING, Status.RUNNING))

    def finished(self):
        return self.filter(status__in=FINISHED_STATUSES)

    # Fences.
    def held(self, pk, token):
        """The running job `pk` while the claim `token` holds."""
        return self.filter(pk=pk, claim_token=token, status=Status.RUNNING)

    def progressing(self, pk, token):
        """Where a worker's progress writes land: held, and nobody asked to cancel."""
        return self.held(pk, token).filter(cancel_requested=False)

    # Into the queue.
    def queue(self, job):
        """(new) -> pending: insert `job`, an unsaved, validated row."""
        job.status = Status.PENDING
        job.save(force_insert=True)
        return job

    def requeue(self, pk, queue_turn: float) -> bool:
        """failed, cancelled -> pending, as if new (staff or the owner asked)."""
        return self._cas(
            self.filter(pk=pk, status__in=REQUEUEABLE),
            **REQUEUE_RESET,
            queue_turn=queue_turn,
            error="",
            attempts=0,
            cancel_requested=False,
            finished_at=None,
            preview="",
            preview_step=0,
            webhook_attempts=0,
            webhook_next_at=None,
            webhook_delivered_at=None,
            webhook_error="",
        )

    # A worker's.
    def claim(self, pk, worker_id: str) -> bool:
        """pending -> running, with a new claim token; a job that went back to the queue
        starts again from step 0."""
        return self._cas(
            self.filter(pk=pk, status=Status.PENDING),
            status=Status.RUNNING,
            claim_token=uuid.uuid4(),
            worker_id=worker_id,
            started_at=timezone.now(),
            phase="starting",
            **FRESH_PROGRESS,
        )

    def start(self, pk, token) -> bool:
        """running -> running, denoising begins: only now does the job spend an attempt."""
        return self.progress(pk, token, attempts=F("attempts") + 1)

    def progress(self, pk, token, **fields) -> bool:
        """running -> running: a step, a phase, a preview (fields of PROGRESS_FIELDS).

        The worker's hot path compiles `progressing()` once (db.CompiledUpdates) and
        checks its fields with `check_progress_fields`; this is the same write."""
        check_progress_fields(fields)
        return self._cas(self.progressing(pk, token), **fields)

    def finish(self, pk, token, image: str) -> bool:
        """running -> completed. A cancel that arrives after the last step loses to the
        image; the last step is in, whatever a progress write still holds."""
        return self._cas(
            self.held(pk, token),
            status=Status.COMPLETED,
            current_step=F("total_steps"),
            phase="",
            image=image,
            finished_at=timezone.now(),
        )

    def fail(self, pk, token, message: str) -> bool:
        """running -> failed, with the reason."""
        return self._cas(
            self.held(pk, token),
            status=Status.FAILED,
            phase="",
            error=message[:5000],
            finished_at=timezone.now(),
        )

    def finish_cancelled(self, pk, token) -> bool:
        """running -> cancelled, if someone asked for it."""
        return self._cas(
            self.held(pk, token).filter(cancel_requested=True),
            status=Status.CANCELLED,
            phase="",
            finished_at=timezone.now(),
        )

    def release(self, pk, token, reason: str = WORKER_STOPPED, *, began: bool = False) -> bool:
        """running -> pending (shutdown, a model the worker cannot load, a lost worker);
        an attempt that `began` denoising does not count."""
        return self._cas(
            self.held(pk, token),
            **REQUEUE_RESET,
            attempts=Greatest(F("attempts") - int(began), 0),
            restarts=F("restarts") + 1,
            restart_reason=reason,
        )

    def expire(
        self, pk, token, *, attempts: int, restarts: int, cancel_requested: bool, max_attempts: int
    ) -> str | None:
        """running -> pending, failed or cancelled: the claim's worker stopped beating.

        Cancelled if asked; failed after `max_attempts` attempts, or after
        COLD_LOSSES_PER_ATTEMPT losses per attempt before denoising began (a worker killed
        while loading its model, again and again); else back to the queue. Returns the new
        status, None if the claim changed meanwhile."""
        if cancel_requested:
            return Status.CANCELLED if self.finish_cancelled(pk, token) else None
        if attempts >= max_attempts:
            reason = f"worker lost (attempt {attempts} of {max_attempts})"
        elif restarts + 1 >= max_attempts * COLD_LOSSES_PER_ATTEMPT:
            reason = f"worker lost {restarts + 1} times before the job could start"
        else:
            return Status.PENDING if self.release(pk, token, WORKER_LOST) else None
        return Status.FAILED if self.fail(pk, token, reason) else None

    # Anyone's.
    def cancel(self, pk) -> bool:
        """pending -> cancelled at once."""
        return self._cas(
            self.filter(pk=pk, status=Status.PENDING),
            status=Status.CANCELLED,
            finished_at=timezone.now(),
            cancel_requested=True,
        )

    def ask_to_cancel(self, pk) -> bool:
        """running: its worker stops it at the next step (`finish_cancelled`)."""
        return self._cas(self.filter(pk=pk, status=Status.RUNNING), cancel_requested=True)

    @staticmethod
    def _cas(queryset, **fields) -> bool:
        return bool(queryset.update(**fields))


def check_progress_fields(fields) -> None:
    unknown = set(fields) - PROGRESS_FIELDS
    if unknown:
        raise ValueError(f"not progress fields: {', '.join(sorted(unknown))}")
