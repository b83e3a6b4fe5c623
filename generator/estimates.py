"""How long jobs take, learned from the step times workers record.

An estimate only ever comes from measurements of the same model, backend and
image size; with none yet, there is no estimate (None), never a guess.
"""

import statistics
from dataclasses import dataclass

from .models import GenerationSession, Status

HISTORY = 20
"""How many recent completed jobs an estimate looks at."""
RECENT_STEPS = 5
"""A running job's speed: the mean of its last few steps."""


@dataclass(frozen=True)
class Timing:
    seconds_per_step: float
    seconds_after_steps: float
    """Decoding and saving, from the last step's record to the end."""

    def job_seconds(self, steps: int) -> float:
        return steps * self.seconds_per_step + self.seconds_after_steps


def measured_timing(model: str, backend: str, width: int, height: int) -> Timing | None:
    rows = (
        GenerationSession.objects.filter(
            status=Status.COMPLETED, model=model, backend=backend, width=width, height=height
        )
        .exclude(step_recorded_at=None)
        .order_by("-finished_at")
        .values_list("step_seconds", "step_recorded_at", "finished_at")[:HISTORY]
    )
    per_step, after = [], []
    for step_seconds, last_step_at, finished_at in rows:
        if step_seconds:
            per_step.append(sum(step_seconds) / len(step_seconds))
            after.append(max(0.0, finished_at.timestamp() - last_step_at))
    if not per_step:
        return None
    return Timing(statistics.median(per_step), statistics.median(after))


def expected_seconds(model: str, backend: str, width: int, height: int, steps: int):
    timing = measured_timing(model, backend, width, height)
    return None if timing is None else round(timing.job_seconds(steps), 1)


def remaining_seconds(step_seconds: list[float], step: int, total: int, after: float) -> float:
    """A running job's time left: its own recent speed, then the measured decode and save."""
    recent = step_seconds[-RECENT_STEPS:]
    per_step = sum(recent) / len(recent) if recent else 0.0
    return round(max(0, total - step) * per_step + after, 1)


def queue_eta(
    own_seconds: float | None,
    ahead_seconds: float,
    running_seconds: float,
    workers: int,
) -> float | None:
    """A queued job's time to its image: the work ahead shared by the live workers, then its own.

    `ahead_seconds` counts the expected time of the queued jobs ahead (those without
    an estimate count as this one), `running_seconds` what the running jobs have left.
    """
    if own_seconds is None:
        return None
    return round((ahead_seconds + running_seconds) / max(1, workers) + own_seconds, 1)


def queue_place(session) -> tuple[int | None, float | None]:
    """(position, seconds to the image) of a row read with `.with_queue_place()`.

    A pending row has a position (1: next) and, with history and live workers,
    an ETA; a running row has its worker's ETA unless the worker is lost.
    """
    if session.status == Status.PENDING:
        position = (session.queue_ahead or 0) + 1
        if not session.queue_workers:
            return position, None
        return position, queue_eta(
            session.expected_seconds,
            session.queue_ahead_seconds or 0.0,
            session.queue_running_seconds or 0.0,
            session.queue_workers,
        )
    if session.status == Status.RUNNING and not session.worker_lost:
        return None, session.eta_seconds
    return None, None
