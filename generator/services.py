"""The one door for session commands (create, cancel, requeue, delete) and the reads they share.

The web, the dialects, the CLI and the admin call these; the worker's own
writes (claims, steps, the result) live in `worker.claims`.
"""

import secrets
import uuid

from django.conf import settings
from django.db import transaction

from .db import retry_on_locked
from .disk import check_room, short_of_room
from .estimates import expected_seconds
from .files import delete_files, save_whole
from .images import as_png
from .models import (
    FINISHED_STATUSES,
    GenerationSession,
    Status,
    WorkerRecord,
)
from .params import (
    FAMILY_MARKERS,
    HIRES_STRENGTH,
    MAX_SEED,
    PARAMETERS,
    family_defaults,
    hires_plan,
    steps_to_run,
)
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


def model_defaults(model: str) -> dict:
    """The defaults a distilled model needs where its request names none (its few steps):
    told by its own scheduler (LCM) or, where nothing in its files says it, by its name
    (turbo, lightning), as the spec's `family_defaults` list them. Empty for an ordinary
    model (the spec's defaults)."""
    folder = local_folder(model)
    scheduler_class = model_scheduler_class(str(folder) if folder else None) or ""
    for marker in FAMILY_MARKERS:
        if marker == scheduler_class or marker in model.lower():
            return family_defaults(marker)
    return {}


def model_form_settings(model: str) -> dict:
    """What the page's form takes when this model is chosen: its own size, its sampler and
    the parameters a model family may change (a distilled model's few steps, else the
    spec's defaults)."""
    size = default_size(model)
    spec = {p.name: p.default for p in PARAMETERS if p.family_defaults}
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
    if values["enable_hr"] and parameters.get("strength") is None:
        values["strength"] = HIRES_STRENGTH
    total_steps = steps_to_run(
        values["steps"],
        values["strength"],
        image=bool(init_image),
        mask=bool(mask_image),
        inpainting_fill=values["inpainting_fill"],
    )
    if values["enable_hr"]:  # both passes on one bar, known from the start
        total_steps += hires_plan(values)[1]
    if values["job"] == "upscale":
        total_steps = 0  # its tiles: counted by the worker
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

    `images`: {"init_image": PIL image, "mask_image": PIL image, "controlnet_<n>": the n-th
    ControlNet unit's image}, already checked.
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
    stored = list(names.values())
    if parameters.get("controlnet"):
        # Each unit's control image, stored once for the batch like the other inputs.
        parameters["controlnet"] = [
            {**unit, "image": names.pop(f"controlnet_{index}", unit.get("image", ""))}
            for index, unit in enumerate(parameters["controlnet"])
        ]
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
        delete_files(stored)
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
