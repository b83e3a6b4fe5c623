"""The one door for session commands (create, cancel, requeue, delete) and the reads they share.

The web, the dialects, the CLI and the admin call these; the worker's own
writes (claims, steps, the result) live in `worker.claims`.
"""

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from .db import retry_on_locked
from .disk import check_room, room_problem, short_of_room
from .estimates import expected_seconds, queue_place
from .files import delete_files, save_whole
from .images import as_png
from .models import FINISHED_STATUSES, GenerationSession, Status, WorkerRecord
from .params import MAX_SEED, PARAMETERS, steps_to_run
from .pipelines import demo
from .pipelines.schedulers import default_sampler, model_scheduler_class
from .pipelines.sources import DEMO_MODEL, local_folder, native_size
from .states import REQUEUEABLE


def default_size(model: str) -> int:
    """The model's own size, from its configs (128 for the demo, 1024 for SDXL), else SD 1.x's
    512 (a hub model not downloaded yet)."""
    if model == DEMO_MODEL:
        return demo.SIZE
    return native_size(model) or 512


DISTILLED_DEFAULTS = (
    # (what the model is, its steps, its guidance): the settings their makers publish.
    ("turbo", 1, 0.0),  # stabilityai/sd-turbo, sdxl-turbo: one step, no guidance
    ("lightning", 4, 0.0),  # ByteDance/SDXL-Lightning's 4-step
    ("LCMScheduler", 4, 1.0),  # latent-consistency distillations
)


def model_defaults(model: str) -> dict:
    """Steps and guidance a distilled model needs, when none are asked for: told by its own
    scheduler (LCM) or, where nothing in its files says it, by its name (turbo, lightning).
    Empty for an ordinary model (the spec's defaults)."""
    folder = local_folder(model)
    scheduler_class = model_scheduler_class(str(folder) if folder else None) or ""
    for marker, steps, guidance in DISTILLED_DEFAULTS:
        if marker == scheduler_class or marker in model.lower():
            return {"steps": steps, "guidance_scale": guidance}
    return {}


def model_form_settings(model: str) -> dict:
    """What the page's form takes when this model is chosen: its own size, its steps,
    guidance and sampler (a distilled model's few steps, else the spec's defaults)."""
    size = default_size(model)
    spec = {p.name: p.default for p in PARAMETERS if p.name in ("steps", "guidance_scale")}
    return {
        "width": size,
        "height": size,
        **spec,
        **model_defaults(model),
        "scheduler": default_sampler_of(model),
    }


def default_sampler_of(model: str) -> str:
    """The sampler a job of this model gets when none is asked for (LCM for an LCM model)."""
    folder = local_folder(model)
    return default_sampler(model_scheduler_class(str(folder) if folder else None))


def session_create(
    *,
    owner=None,
    owner_key: str = "",
    init_image: str = "",
    mask_image: str = "",
    batch_id=None,
    callback_url: str = "",
    client_ip: str | None = None,
    **parameters,
) -> GenerationSession:
    """Queue one session. `parameters` are named in params.py; missing ones take their defaults.

    `init_image` and `mask_image` are stored file names (see `session_create_batch`).
    """
    values = {p.name: p.default for p in PARAMETERS if p.default is not None}
    values |= {name: value for name, value in parameters.items() if value is not None}
    values.setdefault("model", settings.SD_MODEL)
    for name, value in model_defaults(values["model"]).items():
        if parameters.get(name) is None:
            values[name] = value
    values.setdefault("backend", settings.SD_BACKEND)
    values.setdefault("width", default_size(values["model"]))
    values.setdefault("height", default_size(values["model"]))
    values.setdefault("seed", secrets.randbelow(MAX_SEED + 1))
    if parameters.get("scheduler") is None:
        values["scheduler"] = default_sampler_of(values["model"])
    total_steps = steps_to_run(
        values["steps"],
        values["strength"],
        image=bool(init_image),
        mask=bool(mask_image),
        inpainting_fill=values["inpainting_fill"],
    )
    session = GenerationSession(
        owner=owner,
        owner_key=owner_key,
        init_image=init_image,
        mask_image=mask_image,
        batch_id=batch_id,
        callback_url=callback_url,
        client_ip=client_ip or None,
        total_steps=total_steps,
        expected_seconds=expected_seconds(
            values["model"], values["backend"], values["width"], values["height"], total_steps
        ),
        **values,
    )
    session.queue_turn = GenerationSession.objects.next_turn(
        owner.pk if owner else None, owner_key, session.client_ip
    )
    session.full_clean()
    return GenerationSession.objects.queue(session)


def session_create_batch(
    *,
    count: int = 1,
    images: dict | None = None,
    admit=None,
    with_jobs=None,
    **parameters,
) -> list:
    """Queue `count` sessions with seeds seed, seed+1, ... (a random seed too); inputs stored once.

    `images`: {"init_image": PIL image, "mask_image": PIL image}, already checked.
    A disk without room for new work (or media/ over quota) refuses it first (507).
    `admit(count)`: called inside the transaction that inserts, before the inserts, to
    refuse them by raising (the per-owner cap, `limits.check_queue`): its count and the
    inserts are one atomic step.
    `with_jobs()` runs in the jobs' transaction (the browser session that owns them is saved
    with them, or neither is).
    """
    check_room()
    names = {
        field: save_whole(f"inputs/{uuid.uuid4()}.png", as_png(image))
        for field, image in (images or {}).items()
    }
    seed = parameters.pop("seed", None)
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
    batch_id = uuid.uuid4() if count > 1 else None
    try:
        with transaction.atomic():
            if admit is not None:
                admit(count)
            sessions = [
                session_create(
                    seed=(seed + index) % (MAX_SEED + 1), batch_id=batch_id, **names, **parameters
                )
                for index in range(count)
            ]
            if with_jobs is not None:
                with_jobs()
            return sessions
    except BaseException:
        delete_files(names.values())
        raise


WORKER_LOST_WAITING = (
    "The worker running this job stopped answering; the job will be retried when a worker "
    "is available."
)

START_WORKER = "`.venv/bin/python manage.py runworker`"
"""The command that starts a worker after `make run`'s setup (the page shows it as code)."""


def why_waiting(session) -> str | None:
    """Why a session is not moving, in a sentence; None when nothing is wrong.

    For a queued one: no live worker can take it. For a running one: its worker
    stopped answering (its heartbeat is older than the lease).
    """
    if session.status not in (Status.RUNNING, Status.PENDING):
        return None
    full = short_of_room("database")  # the workers cannot write: not their fault
    if full is not None:
        return full.waiting_message
    if session.status == Status.RUNNING:
        return WORKER_LOST_WAITING if session.worker_lost else None
    alive = list(WorkerRecord.objects.alive())
    workers = [w for w in alive if w.serves(session.model, session.backend)]
    if any(worker.ready for worker in workers):
        return None
    if workers:
        return "A worker is starting (loading its libraries); the job begins when it is ready."
    if alive:
        return (
            f"No running worker serves model {session.model!r} with the {session.backend} backend."
        )
    return f"No worker is running: start one with {START_WORKER}."


def session_as_dict(session: GenerationSession) -> dict:
    """The session as the API answers it (POST /api/generate, GET /api/sessions/<id>, the page)."""
    waiting_for = why_waiting(session)
    running = session.status == Status.RUNNING
    return {
        "waiting_for": waiting_for,
        "session_id": str(session.pk),
        "status": session.status,
        "phase": session.phase,
        "current_step": session.current_step,
        "total_steps": session.total_steps,
        "percentage": session.percentage,
        "image_url": session.image_url,
        "error": session.error or None,
        "eta_seconds": session.eta_seconds if running and not waiting_for else None,
        "mode": session.mode,
        "restarts": session.restarts,
        "restart_reason": session.restart_reason or None,
        "preview_url": session.preview_url,
        "created_at": session.created_at.isoformat(),
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "finished_at": session.finished_at.isoformat() if session.finished_at else None,
        "parameters": session.parameters(),
        "progress_url": reverse("generator:session-progress", args=[session.pk]),
    }


def own_queue(viewer) -> list[dict]:
    """The viewer's queued and running sessions, oldest first, each with its place or bar."""
    rows = (
        GenerationSession.objects.owned_by(viewer)
        .unfinished()
        .with_queue_place()
        .order_by("created_at")
    )
    queue = []
    for row in rows:
        position, eta = queue_place(row)
        queue.append(
            {
                "session_id": str(row.pk),
                "prompt": row.prompt,
                "status": row.status,
                "phase": row.phase,
                "current_step": row.current_step,
                "total_steps": row.total_steps,
                "percentage": row.percentage,
                "queue_position": position,
                "eta_seconds": eta,
                "waiting_for": WORKER_LOST_WAITING if row.worker_lost else None,
                "url": row.get_absolute_url(),
            }
        )
    return queue


def session_delete(session: GenerationSession) -> None:
    """Delete a session; its files go once the delete is committed (files.py), and a
    running job stops at its next step (its writes find no row). The admin's deletes come
    here too."""
    session.delete()


class CancelOutcome:
    CANCELLED = "cancelled"
    """It was pending and is cancelled now."""
    CANCELLING = "cancelling"
    """It is running; its worker stops it at the next step."""
    FINISHED = "finished"
    """It had already ended; nothing changed."""
    NOT_FOUND = "not found"


@retry_on_locked
def session_cancel(session_id) -> CancelOutcome:
    sessions = GenerationSession.objects
    # Each transition is a compare-and-set, so a worker claiming the session at the
    # same moment turns "pending" into "running" and the second one applies.
    for _ in range(3):
        if sessions.cancel(session_id):
            return CancelOutcome.CANCELLED
        if sessions.ask_to_cancel(session_id):
            return CancelOutcome.CANCELLING
        status = sessions.filter(pk=session_id).values_list("status", flat=True).first()
        if status is None:
            return CancelOutcome.NOT_FOUND
        if status in FINISHED_STATUSES:
            return CancelOutcome.FINISHED
    return CancelOutcome.CANCELLING


@retry_on_locked
def session_requeue(session_ids) -> int:
    """Put failed and cancelled sessions back in the queue, as if new; returns how many."""
    rows = list(
        GenerationSession.objects.filter(
            pk__in=list(session_ids), status__in=REQUEUEABLE
        ).values_list("pk", "preview", "owner_id", "owner_key", "client_ip")
    )
    previews = [preview for _, preview, *_ in rows if preview]
    count = 0
    for pk, _, *owner in rows:  # back in the queue as new: each takes its owner's next turn
        turn = GenerationSession.objects.next_turn(*owner)
        count += GenerationSession.objects.requeue(pk, turn)
    delete_files(previews)
    return count


READINESS_TIMEOUT = 1.0
"""Seconds the database has to answer a readiness probe."""
_readiness_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")


def readiness_problem(detailed: bool = True) -> str | None:
    """Why this process cannot serve (the database does not answer within a second,
    migrations are missing, a disk is under its floor); None when it can. `detailed`: a
    full disk's path and figures (operators), else the disk by its role only.

    The check runs on a small thread pool of its own, so a database that hangs
    (a pool waiting for a connection) makes the probe fail in a second rather
    than hang the probe, and stuck checks never pile up beyond the pool.
    """
    full = room_problem()
    if full is not None:
        return full.for_operator() if detailed else full.user_message
    try:
        return _readiness_checks.submit(_readiness_check).result(timeout=READINESS_TIMEOUT)
    except FutureTimeout:
        return f"The database did not answer within {READINESS_TIMEOUT:g} s."


def _readiness_check() -> str | None:
    from django.db import DatabaseError, connection, connections
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        return f"The database does not answer: {type(error).__name__}."
    finally:
        connections.close_all()
    if missing:
        return f"{len(missing)} migration(s) not applied: run manage.py migrate."
    return None
