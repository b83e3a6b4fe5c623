"""The worker loop: claim a pending session, run the pipeline, write progress, repeat."""

import contextlib
import gc
import logging
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from PIL import Image

from .. import logs
from ..db import OUTAGE_ERRORS, until_database_answers
from ..disk import media_problem, short_of_room
from ..estimates import measured_timing
from ..images import blurred_mask, fitted
from ..models import WorkerRecord, model_key
from ..notify import QueueListener, listener_conninfo
from ..params import REQUEST_NAMES
from ..pipelines import GenerationInterrupted, GenerationRequest, PipelineBackend, create_backend
from ..pipelines.base import Unbatchable
from ..pipelines.checkpoints import display_name
from ..pipelines.embeddings import hashes_text as ti_hashes
from ..pipelines.loras import hashes_text
from ..pipelines.sources import SetupError, estimated_bytes, model_hash
from ..pipelines.vaes import infotext_fields as vae_fields
from .chores import Chores
from .claims import ClaimedJob, claim_companions, claim_next, recover_lost_sessions
from .heartbeat import Heartbeat, new_worker_id, register_worker, unregister_worker
from .step_reporter import ProgressWriter, StepReporter
from .watchdog import Watchdog, timeout_reason

logger = logging.getLogger(__name__)


TIMING_CACHE_SECONDS = 60.0
IDLE_LOOK_SECONDS = 60.0
"""With LISTEN, how often an idle worker still looks at the queue (a missed notification)."""


@dataclass
class JobRun:
    """A job in the pipeline call under way."""

    job: ClaimedJob
    writer: ProgressWriter
    report_step: StepReporter
    out: bool = False
    """Cancelled, or its claim lost: its image is not kept."""
    settled: bool = False
    """Already marked so, while the rest of its batch went on."""


class Worker:
    def __init__(
        self,
        *,
        poll_interval: float = 0.2,
        once: bool = False,
        device: str | None = None,
        grace: float = 30.0,
        session_ids=None,
        models: list[str] | None = None,
        backends: list[str] | None = None,
        worker_id: str | None = None,
    ):
        self.poll_interval = poll_interval
        self.once = once
        self.device = device or settings.SD_DEVICE
        self.grace = grace
        self.session_ids = session_ids  # only these (the CLI's --inline), else any
        self.lease = settings.SD_WORKER_LEASE
        self.max_attempts = settings.SD_MAX_ATTEMPTS
        self.worker_id = worker_id or new_worker_id()
        self.serves = {"models": models or [], "backends": backends or [], "loaded": []}
        """What it serves, and ("loaded") the pipelines it holds: the heartbeat's record."""
        # Loaded pipelines, least recently used first: a worker serving several
        # models keeps the few it used last warm.
        self.pipelines: OrderedDict[tuple[str, str], PipelineBackend] = OrderedDict()
        self.max_pipelines = settings.SD_WORKER_PIPELINES
        self.memory_budget = settings.SD_WORKER_MEMORY_MB * 2**20
        self.stopping = threading.Event()
        self.wake = threading.Event()
        """Set by a queue notification (PostgreSQL), or to stop: an idle worker looks now."""
        self.listener: QueueListener | None = None
        self.stop_deadline: float | None = None
        self.current_jobs: list[ClaimedJob] = []
        """The jobs of the pipeline call under way (several with SD_WORKER_BATCH)."""
        self.job_deadline: float | None = None
        self.timed_out = False
        # Models this worker failed to load: {(backend, model): (why, when to try again)}.
        self.cannot_load: dict[tuple[str, str], tuple[str, float]] = {}
        self.timings: dict[tuple, tuple[float, object]] = {}
        self.full_disk: str | None = None
        """The full disk this worker last logged (once, until it has room again)."""

    def run(self) -> None:
        self._install_signal_handlers()
        logs.set_worker(self.worker_id)
        # Register before claiming anything, so no other worker takes our
        # first job for a lost one.
        until_database_answers(register_worker, self.worker_id, self.serves, what="registration")
        until_database_answers(
            recover_lost_sessions, lease_seconds=self.lease, max_attempts=self.max_attempts
        )
        heartbeat = Heartbeat(self.worker_id, self.serves, self.lease, self.max_attempts)
        heartbeat.start()
        chores = Chores()
        chores.start()
        watchdog = Watchdog(self)
        watchdog.start()
        conninfo = listener_conninfo()
        if conninfo and not self.once and self.session_ids is None:
            self.listener = QueueListener(conninfo, self.wake).start()
        logger.info(
            "Worker %s ready (device %s, serves %s)", self.worker_id, self.device, self.serves
        )
        try:
            self._loop()
        finally:
            heartbeat.stop()
            chores.stop()
            watchdog.stop()
            if self.listener is not None:
                self.listener.stop()
            with contextlib.suppress(*OUTAGE_ERRORS):  # the lease ends it anyway
                unregister_worker(self.worker_id)
            close_old_connections()
            logger.info("Worker %s stopped", self.worker_id)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()  # a notification from here on wakes the wait below
            close_old_connections()
            if self.database_disk_full():
                if self.once:
                    return  # no job it could record: --once has nothing to do
                self.wait_for_work()
                continue
            # A database outage is waited out here (one log line each way); a
            # job is never claimed, or failed, for the database's sake.
            try:
                job = until_database_answers(
                    claim_next,
                    self.worker_id,
                    self.session_ids,
                    models=self.serves["models"],
                    backends=self.serves["backends"],
                    avoid=self.left_to_others(),
                    loaded=self.serves["loaded"],
                    grace=settings.SD_ROUTE_GRACE,
                    what="the claim of the next job",
                    give_up=self.stopping.is_set,
                )
            except OUTAGE_ERRORS:
                return  # stopping while the database is away
            if job is None:
                if self.once:
                    return
                self.wait_for_work()
                continue
            jobs = [job, *self.companions(job)]
            with logs.job(job.session.pk):
                self.process(jobs)
            if self.once:
                return

    def database_disk_full(self) -> bool:
        """The database's disk is under SD_DB_MIN_FREE_MB: claim nothing (a job whose
        progress and image could not be recorded), say so once, and look again later."""
        full = short_of_room("database")
        text = full.for_operator() if full else None
        if text and text.split(":")[0] != (self.full_disk or "").split(":")[0]:
            logger.warning("%s Claiming no job until an operator frees space.", text)
        elif self.full_disk and not full:
            logger.warning("The database disk has room again: claiming jobs")
        self.full_disk = text
        return full is not None

    def refuse_without_room(self, jobs: list[ClaimedJob]) -> bool:
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

    def companions(self, job: ClaimedJob) -> list[ClaimedJob]:
        """More queued jobs to run in `job`'s pipeline call, up to SD_WORKER_BATCH in all."""
        if settings.SD_WORKER_BATCH < 2 or self.once:
            return []
        try:
            return claim_companions(
                job, self.worker_id, settings.SD_WORKER_BATCH - 1, self.session_ids
            )
        except OUTAGE_ERRORS:  # the database went away: the job runs alone
            return []

    def wait_for_work(self) -> None:
        """Idle: on PostgreSQL, until a job is queued (LISTEN; a look a minute in case a
        notification was missed); else, or while the listener is down, a poll interval."""
        if self.listener is not None and self.listener.listening.is_set():
            self.wake.wait(IDLE_LOOK_SECONDS)
        else:
            self.wake.wait(self.poll_interval)

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming; interrupt the current job once `grace` seconds have passed."""
        grace = self.grace if grace is None else grace
        self.stop_deadline = time.monotonic() + grace
        self.stopping.set()
        self.wake.set()

    def past_grace(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    def process(self, jobs: list[ClaimedJob]) -> None:
        """Run the claimed jobs, one, or several sharing one pipeline call (SD_WORKER_BATCH).

        In a batch each job keeps its own progress, previews and result. A job cancelled
        (or whose claim is lost) mid-batch is settled at once and leaves the others
        running: the batch still computes its image, and discards it.
        """
        for job in jobs:
            session = job.session
            logger.info(
                "Running session %s (%s, %s, attempt %s%s)",
                session.pk,
                session.backend,
                session.model,
                session.attempts + 1,
                f", batch of {len(jobs)}" if len(jobs) > 1 else "",
            )
        if self.refuse_without_room(jobs):
            return
        runs = [self.run_of(job) for job in jobs]
        self.timed_out = False

        def going() -> list[JobRun]:
            return [run for run in runs if not run.out]

        def on_start() -> None:
            # The attempts are counted by the writers, off the loop; cancelled, or the
            # claim lost, while the model loaded: that job is out.
            for run in runs:
                if not run.writer.submit_call(run.job.begin):
                    self.leave_batch(run, runs)
            if not going():
                raise GenerationInterrupted
            for run in runs:
                run.report_step.start()
            if settings.SD_JOB_TIMEOUT:
                self.job_deadline = time.monotonic() + settings.SD_JOB_TIMEOUT

        def over_time() -> bool:
            self.timed_out = self.job_deadline is not None and time.monotonic() > self.job_deadline
            return self.timed_out

        def on_step(step: int, total: int, latents=None) -> bool:
            if self.past_grace() or over_time():
                return False
            for index, run in enumerate(runs):
                rows = None if latents is None else latents[index : index + 1]
                if not run.out and not run.report_step(step, total, rows):
                    self.leave_batch(run, runs)
            return bool(going())

        def on_phase(phase: str) -> None:
            # Through the writers, in order after the steps handed to them.
            for run in going():
                if not run.writer.submit_call(run.job.record_phase, phase):
                    self.leave_batch(run, runs)
            if not going() or self.past_grace() or over_time():
                raise GenerationInterrupted

        first = jobs[0].session
        self.current_jobs = jobs
        try:
            try:
                backend = self.backend_for(first.backend, first.model, on_phase)
            except GenerationInterrupted:
                raise
            except Exception as exc:
                self.could_not_load(jobs, exc)
                return
            images = backend.generate_batch(
                [request_of(run.job.session) for run in runs],
                on_step=on_step,
                on_phase=on_phase,
                on_start=on_start,
            )
            on_phase("saving")
            for run, image in zip(runs, images, strict=True):
                session = run.job.session
                if run.out:
                    if not run.settled:
                        self.settle_interrupted(run.job)
                    continue
                metadata = {
                    "model_hash": model_hash(session.model),
                    "lora_hashes": hashes_text(session.prompt, session.negative_prompt),
                    "vae": vae_fields(backend.vae_used),
                    "ti_hashes": ti_hashes(session.prompt, session.negative_prompt, session.model),
                }
                if run.job.complete(image, **metadata):
                    logger.info("Completed session %s", session.pk)
        except Unbatchable:
            # Prompts of different lengths: nothing ran yet; one job at a time.
            self.close_runs(runs)
            for job in jobs:
                with logs.job(job.session.pk):
                    self.process([job])
        except GenerationInterrupted:
            for run in runs:
                if not run.settled:
                    self.settle_interrupted(run.job)
        except Exception as exc:  # the worker outlives any job
            logger.exception("Session(s) %s failed", ", ".join(str(job.session.pk) for job in jobs))
            if is_out_of_memory(exc):
                free_accelerator_memory()
            reason = describe_error(exc)
            for run in runs:
                if not run.settled:
                    until_database_answers(run.job.fail, reason, what="a failed job's record")
        finally:
            # Every job of the batch is settled by now.
            for run in runs:
                run.writer.abandon()
            self.current_jobs, self.job_deadline = [], None

    def run_of(self, job: ClaimedJob) -> JobRun:
        """The job's progress writer (started) and step reporter."""
        timing = self.timing_of(job.session)
        writer = ProgressWriter(job, interval=settings.SD_STEP_WRITE_INTERVAL)
        writer.start()
        report_step = StepReporter(
            job,
            seconds_after_steps=timing.seconds_after_steps if timing else 0.0,
            previews=settings.SD_PREVIEWS,
            preview_interval=settings.SD_PREVIEW_INTERVAL,
            writer=writer,
        )
        return JobRun(job, writer, report_step)

    def leave_batch(self, run: JobRun, runs: list[JobRun]) -> None:
        """`run` is out (cancelled, or its claim lost); in a batch that goes on, it is
        settled now, so its page need not wait for the others."""
        run.out = True
        if any(not other.out for other in runs):
            run.writer.close()
            self.settle_interrupted(run.job)
            run.settled = True

    @staticmethod
    def close_runs(runs: list[JobRun]) -> None:
        for run in runs:
            run.writer.close()

    def timing_of(self, session):
        """The measured step timing of jobs like this one (for the ETA), read at most once
        a minute per model, backend and size: a job does not wait on it."""
        key = (session.model, session.backend, session.width, session.height)
        cached = self.timings.get(key)
        if cached is None or time.monotonic() - cached[0] > TIMING_CACHE_SECONDS:
            cached = self.timings[key] = (time.monotonic(), measured_timing(*key))
        return cached[1]

    def settle_interrupted(self, job: ClaimedJob) -> None:
        until_database_answers(self._settle_interrupted, job, what="an interrupted job's record")

    def _settle_interrupted(self, job: ClaimedJob) -> None:
        if job.finish_cancelled():
            logger.info("Cancelled session %s", job.session.pk)
        elif self.timed_out and job.fail(timeout_reason()):
            logger.warning("Stopped session %s: over SD_JOB_TIMEOUT", job.session.pk)
        elif self.stopping.is_set() and job.release():
            logger.info("Released session %s to the queue (shutdown)", job.session.pk)
        else:
            logger.warning("Lost the claim on session %s; dropped it", job.session.pk)

    def backend_for(self, name: str, model: str, on_phase) -> PipelineBackend:
        """The warm backend for this model, loading it on first use."""
        key = (name, model)
        known = self.cannot_load.get(key)
        if known and time.monotonic() < known[1]:
            raise ModelUnavailable(known[0])
        if key in self.pipelines:
            self.pipelines.move_to_end(key)
            return self.pipelines[key]
        self.make_room(count=1, size=estimated_bytes(model))
        on_phase(loading_phase(model))  # the job's page: "loading sd15_dreamshaper..."
        backend = create_backend(name, model, self.device)
        backend.load(on_phase)
        self.pipelines[key] = backend
        self.make_room(count=0, size=0)  # its real size is known now
        self.advertise_loaded()
        if self.cannot_load.pop(key, None):  # it loads again (the folder was mended)
            record_cannot_load(self.worker_id, self.cannot_load)
        return backend

    def make_room(self, count: int, size: int) -> None:
        """Unload the least recently used pipelines until `count` more (of `size` bytes)
        fit within SD_WORKER_PIPELINES and SD_WORKER_MEMORY_MB; the newest always stays."""
        while len(self.pipelines) > (0 if count else 1):
            held = sum(backend.memory_bytes() for backend in self.pipelines.values())
            over_count = len(self.pipelines) + count > self.max_pipelines
            over_budget = bool(self.memory_budget) and held + size > self.memory_budget
            if not (over_count or over_budget):
                return
            (backend_name, model), backend = self.pipelines.popitem(last=False)
            logger.info(
                "Unloading %s (%s, %d MB) to make room", model, backend_name,
                backend.memory_bytes() // 2**20,
            )  # fmt: skip
            del backend
            gc.collect()
            free_accelerator_memory()
            self.advertise_loaded()

    def advertise_loaded(self) -> None:
        """Tell the other workers which pipelines this one holds (their claims route by it)."""
        self.serves["loaded"] = [model_key(*key) for key in self.pipelines]
        until_database_answers(
            record_loaded, self.worker_id, self.serves["loaded"], what="the loaded models"
        )

    def could_not_load(self, jobs: list[ClaimedJob], exc: Exception) -> None:
        """The model did not load here: the worker is unhealthy for it, and leaves its jobs
        to a worker that can load it (each job goes back to the queue, no attempt spent);
        with none, the jobs fail with the real reason. It tries again after
        SD_LOAD_RETRY seconds."""
        session = jobs[0].session
        key = (session.backend, session.model)
        why = str(exc) if isinstance(exc, ModelUnavailable) else describe_error(exc)
        if not isinstance(exc, ModelUnavailable):
            logger.error("Cannot load %s (%s): %s", session.model, session.backend, why)
            self.cannot_load[key] = (why, time.monotonic() + settings.SD_LOAD_RETRY)
            until_database_answers(
                record_cannot_load, self.worker_id, self.cannot_load, what="the worker's health"
            )
        reason = f"This worker could not load the model: {why}"
        leave = key in self.left_to_others()
        for job in jobs:
            if leave and until_database_answers(
                job.release, reason, what="a job left to another worker"
            ):
                logger.warning(
                    "Left session %s to a worker that can load its model", job.session.pk
                )
            else:
                until_database_answers(
                    job.fail, f"Could not load the model: {why}", what="a failed job"
                )

    def left_to_others(self) -> list[tuple[str, str]]:
        """The models this worker failed to load that another live worker can serve."""
        now = time.monotonic()
        mine = [key for key, (_, retry_at) in self.cannot_load.items() if now < retry_at]
        if not mine:
            return []
        others = list(WorkerRecord.objects.alive().exclude(pk=self.worker_id))
        return [
            (backend, model)
            for backend, model in mine
            if any(worker.can_serve(model, backend) for worker in others)
        ]

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum, frame):
            if self.stopping.is_set():
                logger.warning("Second signal: exiting now")
                os._exit(128 + signum)
            logger.info(
                "Signal %s: no new jobs; the current one has %s s to finish", signum, self.grace
            )
            self.stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)


class ModelUnavailable(Exception):
    """A model this worker failed to load a moment ago (it does not try again at once)."""

    def __init__(self, why: str):
        super().__init__(why)


def record_loaded(worker_id: str, loaded: list[str]) -> None:
    WorkerRecord.objects.filter(pk=worker_id).update(loaded_models="\n".join(loaded))


def loading_phase(model: str) -> str:
    """The phase of a job whose model is loading, naming it as users know it."""
    return f"loading {display_name(model)}..."


def record_cannot_load(worker_id: str, cannot_load: dict) -> None:
    """Tell the others (and /ops) which models this worker cannot load, and why."""
    WorkerRecord.objects.filter(pk=worker_id).update(
        cannot_load={model_key(*key): why for key, (why, _) in cannot_load.items()}
    )


def request_of(session) -> GenerationRequest:
    """The pipeline's request: the session's values of the spec's `request` parameters,
    with its input images fitted to the output size (and the mask blurred)."""
    values = {name: getattr(session, name) for name in REQUEST_NAMES}
    size = (session.width, session.height)

    def input_image(field, mode: str):
        with field.open("rb") as file:
            return fitted(Image.open(file).convert(mode), size, session.resize_mode)

    if session.init_image:
        values["init_image"] = input_image(session.init_image, "RGB")
        if session.mask_image:
            mask = input_image(session.mask_image, "L")
            values["mask_image"] = blurred_mask(mask, session.mask_blur)
    return GenerationRequest(**values)


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
    if isinstance(exc, SetupError):
        return message
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if is_out_of_memory(exc):
        text = f"Out of memory: try a smaller image or fewer steps. ({text})"
    return text
