"""The worker loop: claim a pending job, load its model, run it, save its image, report; repeat.

`Worker.process` is that recipe, step by step; the pipeline's hooks for one call are
`batch.Batch`, and every way a job stops short is `failures`.
"""

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.db import close_old_connections

from .. import logs
from ..db import OUTAGE_ERRORS, until_database_answers
from ..disk import short_of_room
from ..estimates import measured_timing
from ..models import WorkerRecord, model_key
from ..notify import QueueListener, listener_conninfo
from ..pipelines import PipelineBackend, create_backend
from ..pipelines.base import Unbatchable, upscale_job
from ..pipelines.checkpoints import display_name
from ..pipelines.sources import estimated_bytes
from ..pipelines.upscalers import torch_device
from . import failures
from .batch import Batch
from .chores import Chores
from .claims import ClaimedJob, claim_companions, claim_next, recover_lost_sessions
from .heartbeat import Heartbeat, new_worker_id, register_worker, unregister_worker
from .watchdog import Watchdog

logger = logging.getLogger(__name__)


TIMING_CACHE_SECONDS = 60.0
IDLE_LOOK_SECONDS = 60.0
"""With LISTEN, how often an idle worker still looks at the queue (a missed notification)."""


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
        """Run the claimed jobs: one, or several sharing one pipeline call (SD_WORKER_BATCH).

        The recipe's steps are numbered; however a job stops short (refused, the model
        not loading, cancelled, over time, an error), `failures` ends it.
        """
        # 1. Claimed (by the caller): say so, and refuse the jobs if no image could be saved.
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
        if failures.refuse_without_room(jobs):
            return
        batch = Batch(self, jobs)
        self.current_jobs, first = jobs, jobs[0].session
        try:
            backend = None
            if first.mode == "upscale":  # no diffusion model: the upscaler alone
                batch.on_phase("upscaling")
                batch.on_start()
                device = torch_device(self.device)
                images = [upscale_job(batch.requests()[0], device, batch.on_step)]
            else:
                # 2. Load the model, or take it warm.
                with failures.loading():
                    backend = self.backend_for(first.backend, first.model, batch.on_phase)
                # 3. Run: the hooks hand each job's steps and phases to its writer.
                images = backend.generate_batch(
                    batch.requests(),
                    on_step=batch.on_step,
                    on_phase=batch.on_phase,
                    on_start=batch.on_start,
                )
            # 4. Save each job's image with its metadata, and 5. report it completed.
            batch.on_phase("saving")
            batch.save(images, backend)
        except Unbatchable:
            # Prompts of different lengths: nothing ran yet; one job at a time.
            batch.close()
            for job in jobs:
                with logs.job(job.session.pk):
                    self.process([job])
        except Exception as exc:
            failures.settle(self, batch, exc)
        finally:
            # Every job of the batch is settled by now.
            batch.abandon()
            self.current_jobs, self.job_deadline = [], None

    def timing_of(self, session):
        """The measured step timing of jobs like this one (for the ETA), read at most once
        a minute per model, backend and size: a job does not wait on it."""
        key = (session.model, session.backend, session.width, session.height)
        cached = self.timings.get(key)
        if cached is None or time.monotonic() - cached[0] > TIMING_CACHE_SECONDS:
            cached = self.timings[key] = (time.monotonic(), measured_timing(*key))
        return cached[1]

    def backend_for(self, name: str, model: str, on_phase) -> PipelineBackend:
        """The warm backend for this model, loading it on first use."""
        key = (name, model)
        known = self.cannot_load.get(key)
        if known and time.monotonic() < known[1]:
            raise failures.ModelUnavailable(known[0])
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
            failures.record_cannot_load(self.worker_id, self.cannot_load)
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
            failures.free_accelerator_memory()
            self.advertise_loaded()

    def advertise_loaded(self) -> None:
        """Tell the other workers which pipelines this one holds (their claims route by it)."""
        self.serves["loaded"] = [model_key(*key) for key in self.pipelines]
        until_database_answers(
            record_loaded, self.worker_id, self.serves["loaded"], what="the loaded models"
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


def record_loaded(worker_id: str, loaded: list[str]) -> None:
    WorkerRecord.objects.filter(pk=worker_id).update(loaded_models="\n".join(loaded))


def loading_phase(model: str) -> str:
    """The phase of a job whose model is loading, naming it as users know it."""
    return f"loading {display_name(model)}..."
