"""How a claimed job that does not complete ends, and the reason its page shows.

Every way a job stops short is here, mapped to the transition it takes (`states`, through
the job's fenced writes) and a readable reason without server paths:

| What happened | The job ends |
|---|---|
| no room for its image (media disk or quota), before any step | failed, "nothing was computed" |
| its model did not load here | back to the queue for a worker that can load it, else failed |
| interrupted: asked to cancel | cancelled |
| interrupted: over SD_JOB_TIMEOUT | failed, `timeout_reason()` |
| interrupted: the worker stops (shutdown past its grace) | back to the queue |
| interrupted: its claim was lost | nothing (the job is another worker's now) |
| any other error | failed, "<type>: <message>"; out of memory says so, and the cache is freed |

The loop (`loop.py`) runs the recipe; it hands whatever it raised to `settle`.
"""

import contextlib
import logging
import re
import time

from django.conf import settings

from ..db import until_database_answers
from ..disk import media_problem
from ..media_storage import StorageUnavailable
from ..models import WorkerRecord, model_key
from ..pipelines import GenerationInterrupted
from ..pipelines.sources import SetupError

logger = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """A model this worker failed to load a moment ago (it does not try again at once)."""


class LoadFailed(Exception):
    """The model did not load: `cause` says why."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


@contextlib.contextmanager
def loading():
    """What goes wrong while the model loads is a load failure (`could_not_load`), except
    an interruption (cancelled, or the worker stopping, while it loads)."""
    try:
        yield
    except GenerationInterrupted:
        raise
    except Exception as exc:
        raise LoadFailed(exc) from exc


def settle(worker, batch, exc: Exception) -> None:
    """End each job of `batch` that `exc` stopped, as the table above says."""
    jobs = [run.job for run in batch.runs]
    if isinstance(exc, LoadFailed):
        could_not_load(worker, jobs, exc.cause)
        return
    unsettled = [run.job for run in batch.runs if not run.settled]
    if isinstance(exc, GenerationInterrupted):
        for job in unsettled:
            settle_interrupted(job, timed_out=batch.timed_out, stopping=worker.stopping.is_set())
        return
    # The worker outlives any job.
    logger.error("Session(s) %s failed", ", ".join(str(job.session.pk) for job in jobs),
                 exc_info=exc)  # fmt: skip
    if is_out_of_memory(exc):
        free_accelerator_memory()
    reason = describe_error(exc)
    for job in unsettled:
        until_database_answers(job.fail, reason, what="a failed job's record")


def refuse_without_room(jobs) -> bool:
    """The media disk is under SD_MEDIA_MIN_FREE_MB or media/ over SD_MEDIA_QUOTA_GB: no
    image could be saved, so the jobs fail now, before any step, with the reason."""
    problem = media_problem()
    if problem is None:
        return False
    logger.warning("Refusing session(s) %s: %s", ", ".join(str(j.session.pk) for j in jobs),
                   problem)  # fmt: skip
    what = str(getattr(problem, "user_message", problem)).split(":")[0]
    reason = f"{what}: the job was not started (nothing was computed); try again later."
    for job in jobs:
        until_database_answers(job.fail, reason, what="a refused job's record")
    return True


def settle_interrupted(job, *, timed_out: bool, stopping: bool) -> None:
    """A job the step hook stopped: cancelled, over time, released at shutdown, or lost."""
    until_database_answers(
        _settle_interrupted, job, timed_out, stopping, what="an interrupted job's record"
    )


def _settle_interrupted(job, timed_out: bool, stopping: bool) -> None:
    if job.finish_cancelled():
        logger.info("Cancelled session %s", job.session.pk)
    elif timed_out and job.fail(timeout_reason()):
        logger.warning("Stopped session %s: over SD_JOB_TIMEOUT", job.session.pk)
    elif stopping and job.release():
        logger.info("Released session %s to the queue (shutdown)", job.session.pk)
    else:
        logger.warning("Lost the claim on session %s; dropped it", job.session.pk)


def could_not_load(worker, jobs, exc: Exception) -> None:
    """The model did not load here: the worker is unhealthy for it, and leaves its jobs
    to a worker that can load it (each job goes back to the queue, no attempt spent);
    with none, the jobs fail with the real reason. It tries again after
    SD_LOAD_RETRY seconds."""
    session = jobs[0].session
    key = (session.backend, session.model)
    why = str(exc) if isinstance(exc, ModelUnavailable) else describe_error(exc)
    if not isinstance(exc, ModelUnavailable):
        logger.error("Cannot load %s (%s): %s", session.model, session.backend, why)
        worker.cannot_load[key] = (why, time.monotonic() + settings.SD_LOAD_RETRY)
        until_database_answers(
            record_cannot_load, worker.worker_id, worker.cannot_load, what="the worker's health"
        )
    reason = f"This worker could not load the model: {why}"
    leave = key in worker.left_to_others()
    for job in jobs:
        if leave and until_database_answers(
            job.release, reason, what="a job left to another worker"
        ):
            logger.warning("Left session %s to a worker that can load its model", job.session.pk)
        else:
            until_database_answers(
                job.fail, f"Could not load the model: {why}", what="a failed job"
            )


def record_cannot_load(worker_id: str, cannot_load: dict) -> None:
    """Tell the others (and /ops) which models this worker cannot load, and why."""
    WorkerRecord.objects.filter(pk=worker_id).update(
        cannot_load={model_key(*key): why for key, (why, _) in cannot_load.items()}
    )


def timeout_reason() -> str:
    """Why a job that ran past SD_JOB_TIMEOUT failed (the loop's check and the watchdog's)."""
    return (
        f"The job denoised for longer than SD_JOB_TIMEOUT ({settings.SD_JOB_TIMEOUT:g} s) "
        "and was stopped: ask for fewer steps or a smaller image."
    )


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


SERVER_PATH = re.compile(r"(?<![\w.~])(?:/[\w.@+-]+){2,}/?")
"""An absolute path; not the tail of a relative one (`./models/sd15`, `~/models/sd15`: as
the user wrote it in SD_MODEL or a request)."""


def without_paths(text: str) -> str:
    """`text` with each absolute server path cut to its last part: users see no paths."""
    return SERVER_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def describe_error(exc: BaseException) -> str:
    """The error as a job's page shows it: its type and message, without server paths (a
    setup problem's message says it all: no type)."""
    message = without_paths(str(exc).strip())
    if isinstance(exc, SetupError | StorageUnavailable):
        return message
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if is_out_of_memory(exc):
        text = f"Out of memory: try a smaller image or fewer steps. ({text})"
    return text
