"""What a progress stream says: snapshots of a session row and the messages between two."""

from dataclasses import dataclass

from .models import FINISHED_STATUSES, GenerationSession, Status, percentage

SNAPSHOT_FIELDS = (
    "id",
    "status",
    "phase",
    "current_step",
    "total_steps",
    "step_recorded_at",
    "image",
    "error",
)


@dataclass(frozen=True)
class Snapshot:
    status: str
    phase: str
    current_step: int
    total_steps: int
    step_recorded_at: float | None
    image_url: str | None
    error: str

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


def read_snapshots(session_ids) -> dict:
    """One query for every watched session: {session id: Snapshot}."""
    rows = GenerationSession.objects.filter(pk__in=list(session_ids)).only(*SNAPSHOT_FIELDS)
    return {row.pk: snapshot_of(row) for row in rows}


def snapshot_of(session: GenerationSession) -> Snapshot:
    return Snapshot(
        status=session.status,
        phase=session.phase,
        current_step=session.current_step,
        total_steps=session.total_steps,
        step_recorded_at=session.step_recorded_at,
        image_url=session.image_url,
        error=session.error,
    )


def progress_message(snapshot: Snapshot, step: int | None = None) -> dict:
    step = snapshot.current_step if step is None else step
    message = {
        "type": "progress",
        "current_step": step,
        "total_steps": snapshot.total_steps,
        "percentage": percentage(step, snapshot.total_steps),
    }
    if snapshot.step_recorded_at is not None:
        message["at"] = snapshot.step_recorded_at
    return message


def messages_between(previous: Snapshot | None, current: Snapshot) -> list[dict]:
    """The messages a client that saw `previous` needs to reach `current`.

    Steps never go backwards; a finished session ends with exactly one terminal
    message (`complete`, `error` or `cancelled`).
    """
    messages = []
    shown_step = previous.current_step if previous else 0
    running = current.status == Status.RUNNING
    if running and current.phase and (previous is None or previous.phase != current.phase):
        messages.append({"type": "phase", "phase": current.phase})
    just_started = previous is None or previous.status != Status.RUNNING
    if running and (just_started or current.current_step > shown_step):
        messages.append(progress_message(current))
    if current.status == Status.COMPLETED:
        if shown_step < current.total_steps:  # fill the bar for clients that joined late
            messages.append(progress_message(current, step=current.total_steps))
        messages.append({"type": "complete", "image_url": current.image_url})
    elif current.status == Status.FAILED:
        messages.append({"type": "error", "message": current.error or "Generation failed."})
    elif current.status == Status.CANCELLED:
        messages.append({"type": "cancelled"})
    return messages
