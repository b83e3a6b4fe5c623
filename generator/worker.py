"""The worker loop: claim a pending session, run the pipeline, write progress, repeat."""

import logging
import os
import signal
import socket
import threading
import uuid

from django.conf import settings
from django.db import close_old_connections

from .pipelines import GenerationInterrupted, GenerationRequest, PipelineBackend, create_backend
from .queue import ClaimedJob, claim_next

logger = logging.getLogger(__name__)


class Worker:
    def __init__(
        self, *, poll_interval: float = 0.2, once: bool = False, device: str | None = None
    ):
        self.poll_interval = poll_interval
        self.once = once
        self.device = device or settings.SD_DEVICE
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.backends: dict[tuple[str, str], PipelineBackend] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        self._install_signal_handlers()
        logger.info("Worker %s ready (device %s)", self.worker_id, self.device)
        while not self.stopping.is_set():
            close_old_connections()
            job = claim_next(self.worker_id)
            if job is None:
                if self.once:
                    break
                self.stopping.wait(self.poll_interval)
                continue
            self.process(job)
            if self.once:
                break
        close_old_connections()
        logger.info("Worker %s stopped", self.worker_id)

    def stop(self) -> None:
        self.stopping.set()

    def process(self, job: ClaimedJob) -> None:
        session = job.session
        logger.info("Running session %s (%s, %s)", session.pk, session.backend, session.model)
        try:
            backend = self.backend_for(session.backend, session.model, job.record_phase)
            request = GenerationRequest(
                prompt=session.prompt,
                negative_prompt=session.negative_prompt,
                steps=session.steps,
                guidance_scale=session.guidance_scale,
                width=session.width,
                height=session.height,
                seed=session.seed,
            )
            image = backend.generate(request, on_step=job.record_step, on_phase=job.record_phase)
            job.record_phase("saving")
            job.complete(image)
            logger.info("Completed session %s", session.pk)
        except GenerationInterrupted:
            logger.info("Session %s stopped before its end", session.pk)
        except Exception as exc:  # the worker outlives any job
            logger.exception("Session %s failed", session.pk)
            job.fail(describe_error(exc))

    def backend_for(self, name: str, model: str, on_phase) -> PipelineBackend:
        """The warm backend for this model, loading it on first use."""
        key = (name, model)
        if key not in self.backends:
            backend = create_backend(name, model, self.device)
            backend.load(on_phase)
            self.backends[key] = backend
        return self.backends[key]

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum, frame):
            logger.info("Signal %s: stopping after the current job", signum)
            self.stop()
            # A second signal ends the process at once.
            signal.signal(signum, signal.SIG_DFL)

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)


def describe_error(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
