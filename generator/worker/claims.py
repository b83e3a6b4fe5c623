"""The database is the queue, worker side: claims, a claimed job's writes, recovery.

Every write of a running job is conditional on the claim token, so a worker that
lost its claim (recovered by another worker, released at shutdown) changes
nothing: the writes are the transitions of `states`, called with the token. No
transaction is held across a denoising step: each write stands alone.
"""

import contextlib
import functools
import io
import logging
import time
from datetime import timedelta

from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from ..db import (
    OUTAGE_ERRORS,
    CompiledUpdates,
    is_outage,
    retry_on_locked,
    until_database_answers,
)
from ..files import save_whole
from ..media_storage import recently_unavailable, save_with_retries
from ..metadata import png_info
from ..models import (
    WORKER_STOPPED,
    GenerationSession,
    WorkerRecord,
    model_key,
)
from ..params import BATCH_KEY, BY_NAME
from ..prompts import extract_loras
from ..states import COLD_LOSSES_PER_ATTEMPT, check_progress_fields  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


class ClaimedJob:
    """A session this worker holds; its methods are the only writes a worker makes."""

    def __init__(self, session: GenerationSession):
        self.session = session
        self.token = session.claim_token
        self.preview_name = session.preview.name or None
        self.database_away = False
        self.began = False
        self.writes = CompiledUpdates(GenerationSession.objects.progressing(session.pk, self.token))
        """`states`' progress transition, compiled once: while the claim holds and nobody
        asked to cancel."""

    def _mine(self):
        """This job while this worker's claim holds (`states`' fence)."""
        return GenerationSession.objects.held(self.session.pk, self.token)

    def _update(self, **fields) -> bool:
        """Write progress `fields` while the claim holds and nobody asked to cancel."""
        check_progress_fields(fields)
        return self._unless_away(self.writes.update, **fields)

    @retry_on_locked
    def _unless_away(self, write, *args, **kwargs) -> bool:
        """With the database away, the job goes on without its progress writes (one
        line in the log); the final write waits for the database to return."""
        try:
            return bool(write(*args, **kwargs))
        except OUTAGE_ERRORS as exc:
            if not is_outage(exc):
                raise
            if not self.database_away:
                logger.warning(
                    "The database does not answer; session %s goes on without progress writes",
                    self.session.pk,
                )
            self.database_away = True
            return True

    def begin(self) -> bool:
        """Denoising starts: only now does the job spend one of its attempts.

        A worker killed while it starts or loads the model (before this) costs the
        job nothing; one that dies while denoising it does (SD_MAX_ATTEMPTS)."""
        self.began = self._unless_away(GenerationSession.objects.start, self.session.pk, self.token)
        return self.began

    def record_phase(self, phase: str) -> bool:
        return self._update(phase=phase)

    def record_step(
        self,
        step: int,
        total: int,
        *,
        step_seconds: list[float] | None = (),
        eta_seconds: float | None = None,
        preview: bytes | None = None,
        preview_step: int | None = None,
        recorded_at: float | None = None,
    ) -> bool:
        """Write the step (and a new live preview, of `preview_step`: this step unless
        said); False tells the pipeline to stop. `recorded_at`: when the step ended (Unix
        time; now unless said); `step_seconds` None: the step times are left as they are."""
        # After the last step the pipeline decodes the latents: say so, so the
        # page does not sit at a silent 100 %.
        fields = {
            "current_step": step,
            "total_steps": total,
            "step_recorded_at": recorded_at or time.time(),
            "phase": "decoding" if step >= total else "denoising",
            "eta_seconds": eta_seconds,
        }
        if step_seconds is not None:
            fields["step_seconds"] = list(step_seconds)
        if preview is None or recently_unavailable():  # no preview waits on a bucket away
            return self._update(**fields)
        # Each preview gets a new file, so a reader never sees one half-written;
        # the one it replaces goes once the row points at the new one.
        try:
            name = save_whole(preview_name(self.session.pk, step), preview)
        except OSError as exc:  # a full disk, the storage away: previews are a nicety
            logger.warning("Could not write the preview of session %s: %s", self.session.pk, exc)
            return self._update(**fields)
        written = self._update(**fields, preview=name, preview_step=preview_step or step)
        stale, self.preview_name = (
            (self.preview_name, name) if written else (name, self.preview_name)
        )
        if stale:
            with contextlib.suppress(OSError):  # the storage away: left for prune --orphans
                default_storage.delete(stale)
        return written

    def complete(self, image, deadline: float | None = None, **metadata) -> bool:
        """Save the image, with `metadata` (model_hash, lora_hashes) in its PNG text.

        A media storage that is away is tried again with back-off until
        SD_MEDIA_RETRY_SECONDS or `deadline` (the job's timeout, time.monotonic()), then its
        StorageUnavailable fails the job. The row names the file only once it is whole."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=png_info(self.session, **metadata))
        name = save_with_retries(
            functools.partial(
                save_whole,
                GenerationSession.image.field.generate_filename(None, f"{self.session.pk}.png"),
                buffer.getvalue(),
            ),
            deadline=deadline,
        )
        # A cancel that arrives after the last step loses to the finished image.
        # The image is kept through a database outage: the write waits for it.
        # The last step is in, whatever the progress writer still holds (its writes find
        # the job finished and change nothing).
        done = until_database_answers(
            retry_on_locked(GenerationSession.objects.finish),
            self.session.pk,
            self.token,
            name,
            what=f"the completion of session {self.session.pk}",
        )
        if not done:  # the claim was lost: nobody will ever link to the file
            default_storage.delete(name)
        return bool(done)

    @retry_on_locked
    def fail(self, message: str) -> bool:
        return GenerationSession.objects.fail(self.session.pk, self.token, message)

    @retry_on_locked
    def finish_cancelled(self) -> bool:
        """Mark the job cancelled if someone asked for it."""
        return GenerationSession.objects.finish_cancelled(self.session.pk, self.token)

    @retry_on_locked
    def release(self, reason: str = WORKER_STOPPED) -> bool:
        """Give the job back to the queue (shutdown, a model this worker cannot load);
        the attempt does not count."""
        return GenerationSession.objects.release(
            self.session.pk, self.token, reason, began=self.began
        )


def preview_name(session_id, step: int) -> str:
    return GenerationSession.preview.field.generate_filename(None, f"{session_id}-{step}.jpg")


ROUTING_WINDOW = 16
"""How far down the queue a worker looks for a job of a model it has loaded."""


@retry_on_locked
def claim_next(
    worker_id: str, session_ids=None, models=None, backends=None, avoid=(), loaded=(), grace=0.0
) -> ClaimedJob | None:
    """Claim the next pending session this worker serves (the fair queue's order), or None.

    `session_ids`, `models` and `backends` restrict what it may take (None: any);
    `avoid` lists (backend, model) pairs it must leave to other workers. `loaded`: the
    `model_key`s of the pipelines it holds; with a `grace` (seconds) it routes (`routed`).
    """
    elsewhere = loaded_elsewhere(worker_id) if grace > 0 else set()
    with transaction.atomic():
        candidates = GenerationSession.objects.pending().in_queue_order()
        if session_ids is not None:
            candidates = candidates.filter(pk__in=session_ids)
        if models:
            candidates = candidates.filter(model__in=models)
        if backends:
            candidates = candidates.filter(backend__in=backends)
        for backend, model in avoid:
            candidates = candidates.exclude(backend=backend, model=model)
        if connection.features.has_select_for_update_skip_locked:
            # PostgreSQL: concurrent workers skip each other's candidate rows
            # instead of queueing on them. (SQLite's IMMEDIATE transaction
            # already serializes this block.)
            candidates = candidates.select_for_update(skip_locked=True)
        if grace > 0:
            rows = candidates.values_list("pk", "backend", "model", "created_at")
            cutoff = timezone.now() - timedelta(seconds=grace)
            pk = routed(list(rows[:ROUTING_WINDOW]), set(loaded), elsewhere, cutoff)
        else:
            pk = candidates.values_list("pk", flat=True).first()
        if pk is None or not GenerationSession.objects.claim(pk, worker_id):
            return None
    return ClaimedJob(GenerationSession.objects.get(pk=pk))


def routed(rows: list[tuple], loaded: set[str], elsewhere: set[str], cutoff) -> object | None:
    """Which of the first pending jobs (pk, backend, model, created_at), in queue order, a
    worker holding the pipelines `loaded` takes: in order, the first of a model it has
    loaded, unless a job before it has waited past the grace (`cutoff`: queued before it),
    which goes first whoever has its model; else the first of a model that no other live
    worker has loaded (`elsewhere`), which it loads. None: the rest wait for the workers
    that have their models, at most the grace."""
    for pk, backend, model, created_at in rows:
        if model_key(backend, model) in loaded or created_at <= cutoff:
            return pk
    return next((pk for pk, b, m, _ in rows if model_key(b, m) not in elsewhere), None)


def loaded_elsewhere(worker_id: str) -> set[str]:
    """The pipelines the other live workers hold loaded (their `model_key`s)."""
    found = set()
    for worker in WorkerRecord.objects.alive().filter(ready=True).exclude(pk=worker_id):
        found |= worker.loaded_keys()
    return found


def names_lora(*texts: str) -> bool:
    return any(extract_loras(text)[1] for text in texts)


@retry_on_locked
def claim_companions(
    job: ClaimedJob, worker_id: str, limit: int, session_ids=None
) -> list[ClaimedJob]:
    """Claim up to `limit` more pending sessions that can share `job`'s pipeline call, the
    first in queue order: text to image, equal to it in every parameter but the prompts
    and the seed (`params.BATCH_KEY`), and without LoRA (a LoRA applies to the whole
    pipeline)."""
    session = job.session
    if limit < 1 or session.init_image or names_lora(session.prompt, session.negative_prompt):
        return []
    if session.controlnet:  # its control images go one job at a time
        return []
    same = Q()
    for name in BATCH_KEY:
        value, parameter = getattr(session, name), BY_NAME[name]
        if parameter.column:
            same &= Q(**{name: value})
            continue
        # In the JSON by key; a row without the key has the spec's default.
        found = Q(**{f"parameters__{name}": value})
        if value == parameter.default:
            found |= ~Q(parameters__has_key=name)
        same &= found
    with transaction.atomic():
        candidates = (
            GenerationSession.objects.pending().in_queue_order().filter(same, init_image="")
        )
        if session_ids is not None:
            candidates = candidates.filter(pk__in=session_ids)
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        rows = candidates.values_list("pk", "prompt", "negative_prompt")[: limit * 4]
        picked = [pk for pk, *texts in rows if not names_lora(*texts)][:limit]
        taken = [pk for pk in picked if GenerationSession.objects.claim(pk, worker_id)]
    claimed = GenerationSession.objects.in_bulk(taken)
    return [ClaimedJob(claimed[pk]) for pk in taken]


@retry_on_locked
def recover_lost_sessions(*, lease_seconds: float, max_attempts: int) -> dict:
    """Re-queue (or fail, after `max_attempts`) running sessions whose worker stopped beating.

    Returns {session id: new status}.
    """
    live_workers = WorkerRecord.objects.alive(lease_seconds).values("id")
    lost = GenerationSession.objects.running().exclude(worker_id__in=live_workers)
    outcomes = {}
    for pk, token, attempts, restarts, cancel_requested, worker in lost.values_list(
        "pk", "claim_token", "attempts", "restarts", "cancel_requested", "worker_id"
    ):
        status = GenerationSession.objects.expire(
            pk,
            token,
            attempts=attempts,
            restarts=restarts,
            cancel_requested=cancel_requested,
            max_attempts=max_attempts,
        )
        if status is not None:
            logger.warning("Session %s lost by worker %s: now %s", pk, worker, status)
            outcomes[pk] = status
    WorkerRecord.objects.exclude(pk__in=live_workers).delete()
    return outcomes
