"""What a progress stream says: snapshots of a session row and the messages between two."""

import base64
import dataclasses
import datetime
import functools
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DEFAULT_DB_ALIAS, connections

from ..estimates import queue_place
from ..media_storage import recently_unavailable
from ..models import (
    FINISHED_STATUSES,
    GenerationSession,
    Status,
    WorkerRecord,
    lease_cutoff,
    percentage,
)
from ..services import WORKER_LOST_WAITING

SNAPSHOT_FIELDS = (
    "id",
    "status",
    "phase",
    "current_step",
    "total_steps",
    "step_recorded_at",
    "eta_seconds",
    "expected_seconds",
    "created_at",
    "preview",
    "preview_step",
    "image",
    "error",
    "owner_id",
    "owner_key",
    "worker_id",
    "restarts",
    "restart_reason",
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
    eta_seconds: float | None = None
    queue_position: int | None = None
    """1 means next; None unless pending."""
    preview_step: int = 0
    preview: str | None = None
    """The newest live preview as a data: URL (or its URL: `preview_link`)."""
    restarts: int = 0
    """Times the job went back to the queue after a worker took it."""
    restart_reason: str = ""
    worker_lost: bool = False
    """Running, but its worker's heartbeat is older than the lease."""
    # Who may watch; never changes, so it takes no part in comparisons.
    owner_id: int | None = field(default=None, compare=False)
    owner_key: str = field(default="", compare=False)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def __hash__(self) -> int:
        # Hashed once per stream for every change (`sse.render`'s cache): computed once.
        try:
            return self.__dict__["_hash"]
        except KeyError:
            value = hash(tuple(getattr(self, f.name) for f in COMPARED))
            object.__setattr__(self, "_hash", value)
            return value


COMPARED = [f for f in dataclasses.fields(Snapshot) if f.compare]


def snapshot_rows(session_ids, cutoff=None):
    """The rows `read_snapshots` reads, as the ORM builds the query."""
    return (
        GenerationSession.objects.filter(pk__in=list(session_ids))
        .only(*SNAPSHOT_FIELDS)
        .with_queue_place(cutoff)
    )


def read_snapshots(session_ids) -> dict:
    """One query for every watched session, queue positions included: {session id: Snapshot}.

    The hub runs this at every tick and NOTIFY. Building and compiling its query took
    the ORM 6 of the 9 ms a read took, so the SQL is compiled once per number of ids
    (`SnapshotSQL`) and run with the ids and the lease cutoff of the moment.
    """
    session_ids = list(session_ids)
    sql, params = SnapshotSQL.of(len(session_ids)).bind(session_ids, lease_cutoff())
    rows = GenerationSession.objects.raw(sql, params)
    return {row.pk: snapshot_of(row) for row in rows}


class SnapshotSQL:
    """`snapshot_rows`' SQL and parameters, compiled once for `count` ids: compiled with
    stand-in ids and cutoff, whose places among the parameters `bind` fills."""

    STAND_IN_CUTOFF = datetime.datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)

    def __init__(self, count: int):
        stand_ins = [uuid.UUID(int=n + 1) for n in range(count)]
        query = snapshot_rows(stand_ins, self.STAND_IN_CUTOFF).query
        self.sql, params = query.get_compiler(using=DEFAULT_DB_ALIAS).as_sql()
        self.params = list(params)
        ids, cutoff = self.prepared(stand_ins, self.STAND_IN_CUTOFF)
        id_places = {value: n for n, value in enumerate(ids)}
        self.id_places = [(p, id_places[v]) for p, v in enumerate(params) if v in id_places]
        self.cutoff_places = [p for p, v in enumerate(params) if v == cutoff]
        if len(self.id_places) != count or not self.cutoff_places:
            raise RuntimeError("The snapshot query's parameters are not where expected.")

    @classmethod
    def of(cls, count: int) -> "SnapshotSQL":
        return _compiled_snapshot_sql(connections[DEFAULT_DB_ALIAS].vendor, count)

    @staticmethod
    def prepared(session_ids: list, cutoff) -> tuple[list, object]:
        """The ids and the cutoff as the database takes them, as the ORM prepares them."""
        connection = connections[DEFAULT_DB_ALIAS]
        pk = GenerationSession._meta.pk
        last_seen_at = WorkerRecord._meta.get_field("last_seen_at")
        return (
            [pk.get_db_prep_value(i, connection) for i in session_ids],
            last_seen_at.get_db_prep_value(cutoff, connection),
        )

    def bind(self, session_ids: list, cutoff) -> tuple[str, list]:
        ids, cutoff = self.prepared(session_ids, cutoff)
        params = list(self.params)
        for place, n in self.id_places:
            params[place] = ids[n]
        for place in self.cutoff_places:
            params[place] = cutoff
        return self.sql, params


def snapshot_of(session: GenerationSession) -> Snapshot:
    """The snapshot of a row read with `.with_queue_place()`."""
    running = session.status == Status.RUNNING
    position, eta = queue_place(session)
    return Snapshot(
        status=session.status,
        phase=session.phase,
        current_step=session.current_step,
        total_steps=session.total_steps,
        step_recorded_at=session.step_recorded_at,
        image_url=session.image_url,
        error=session.error,
        eta_seconds=eta,
        queue_position=position,
        preview_step=session.preview_step if session.preview else 0,
        preview=preview_link(session) if running else None,
        restarts=session.restarts,
        restart_reason=session.restart_reason,
        worker_lost=session.worker_lost,
        owner_id=session.owner_id,
        owner_key=session.owner_key,
    )


def preview_link(session: GenerationSession) -> str | None:
    """What a stream's `preview` message carries: the JPEG itself as a data: URL, or with
    SD_PREVIEW_DELIVERY=url the session's `preview_url` for the page to fetch
    (docs/previews.md)."""
    if settings.SD_PREVIEW_DELIVERY == "url":
        return session.preview_url
    return preview_data_url(session.preview.name)


def preview_data_url(name: str) -> str | None:
    """The preview file as a data: URL (None if there is none, or it was replaced meanwhile)."""
    if not name or recently_unavailable():  # a bucket away or slow holds up no stream
        return None
    try:
        return _read_preview(name)
    except OSError:  # replaced by a newer one meanwhile: that one comes next tick
        return None


@functools.lru_cache(maxsize=64)
def _read_preview(name: str) -> str:
    """Read once per process: each preview has its own name. A missing file is not cached."""
    with default_storage.open(name) as file:
        return "data:image/jpeg;base64," + base64.b64encode(file.read()).decode("ascii")


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
    if snapshot.eta_seconds is not None:
        message["eta_seconds"] = snapshot.eta_seconds
    return message


def messages_between(previous: Snapshot | None, current: Snapshot) -> list[dict]:
    """The messages a client that saw `previous` needs to reach `current`.

    Steps never go backwards; a finished session ends with exactly one terminal
    message (`complete`, `error` or `cancelled`).
    """
    messages = []
    shown_step = previous.current_step if previous else 0
    running = current.status == Status.RUNNING
    if current.queue_position is not None and (
        previous is None or previous.queue_position != current.queue_position
    ):
        messages.append(
            {
                "type": "queued",
                "position": current.queue_position,
                "eta_seconds": current.eta_seconds,
            }
        )
    if running and current.worker_lost and (previous is None or not previous.worker_lost):
        messages.append({"type": "stalled", "message": WORKER_LOST_WAITING})
    came_back = previous is not None and previous.worker_lost and not current.worker_lost
    if (
        running
        and current.phase
        and (previous is None or previous.phase != current.phase or came_back)
    ):
        messages.append({"type": "phase", "phase": current.phase})
    just_started = previous is None or previous.status != Status.RUNNING
    if running and (just_started or current.current_step > shown_step):
        messages.append(progress_message(current))
    if running and current.preview and (previous is None or previous.preview != current.preview):
        messages.append({"type": "preview", "step": current.preview_step, "image": current.preview})
    if current.status == Status.COMPLETED:
        if shown_step < current.total_steps:  # fill the bar for clients that joined late
            messages.append(progress_message(current, step=current.total_steps))
        messages.append({"type": "complete", "image_url": current.image_url})
    elif current.status == Status.FAILED:
        messages.append({"type": "error", "message": current.error or "Generation failed."})
    elif current.status == Status.CANCELLED:
        messages.append({"type": "cancelled"})
    return messages


@functools.lru_cache(maxsize=64)
def _compiled_snapshot_sql(vendor: str, count: int) -> SnapshotSQL:
    """Kept for the 64 numbers of watched sessions last seen (the SQL grows with the count)."""
    return SnapshotSQL(count)
