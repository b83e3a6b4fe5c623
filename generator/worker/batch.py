"""The jobs of one pipeline call, and the hooks the pipeline calls while it runs them.

One job, or several sharing one call (SD_WORKER_BATCH). Each job keeps its own progress,
previews and result. A job cancelled (or whose claim is lost) mid-batch is settled at once
and leaves the others running: the batch still computes its image, and discards it.
"""

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image

from ..images import blurred_mask, fitted
from ..params import REQUEST_NAMES
from ..pipelines import GenerationInterrupted, GenerationRequest
from ..pipelines.controlnet import ControlUnit
from ..pipelines.embeddings import hashes_text as ti_hashes
from ..pipelines.loras import hashes_text
from ..pipelines.sources import model_hash
from ..pipelines.vaes import infotext_fields as vae_fields
from .claims import ClaimedJob
from .failures import settle_interrupted
from .step_reporter import ProgressWriter, StepReporter

logger = logging.getLogger(__name__)


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


class Batch:
    """`on_start`, `on_step` and `on_phase` are the pipeline's hooks; each returns (or
    raises `GenerationInterrupted`) to stop the call once no job is left in it, the worker
    is past its grace, or the call is over SD_JOB_TIMEOUT."""

    def __init__(self, worker, jobs: list[ClaimedJob]):
        self.worker = worker
        self.runs = [self.run_of(job) for job in jobs]
        self.timed_out = False

    def run_of(self, job: ClaimedJob) -> JobRun:
        """The job's progress writer (started) and step reporter."""
        timing = self.worker.timing_of(job.session)
        writer = ProgressWriter(
            job,
            interval=settings.SD_STEP_WRITE_INTERVAL,
            times_interval=settings.SD_STEP_TIMES_WRITE_INTERVAL,
        )
        writer.start()
        report_step = StepReporter(
            job,
            seconds_after_steps=timing.seconds_after_steps if timing else 0.0,
            previews=settings.SD_PREVIEWS,
            preview_interval=settings.SD_PREVIEW_INTERVAL,
            writer=writer,
        )
        return JobRun(job, writer, report_step)

    def requests(self) -> list[GenerationRequest]:
        return [request_of(run.job.session) for run in self.runs]

    def going(self) -> list[JobRun]:
        return [run for run in self.runs if not run.out]

    def on_start(self) -> None:
        """Denoising begins. The attempts are counted by the writers, off the loop; a job
        cancelled, or whose claim was lost, while the model loaded is out."""
        for run in self.runs:
            if not run.writer.submit_call(run.job.begin):
                self.leave(run)
        if not self.going():
            raise GenerationInterrupted
        for run in self.runs:
            run.report_step.start()
        if settings.SD_JOB_TIMEOUT:
            self.worker.job_deadline = time.monotonic() + settings.SD_JOB_TIMEOUT

    def on_step(self, step: int, total: int, latents=None) -> bool:
        if self.must_stop():
            return False
        for index, run in enumerate(self.runs):
            rows = None if latents is None else latents[index : index + 1]
            if not run.out and not run.report_step(step, total, rows):
                self.leave(run)
        return bool(self.going())

    def on_phase(self, phase: str) -> None:
        """Through the writers, in order after the steps handed to them."""
        for run in self.going():
            if not run.writer.submit_call(run.job.record_phase, phase):
                self.leave(run)
        if not self.going() or self.must_stop():
            raise GenerationInterrupted

    def must_stop(self) -> bool:
        """The worker is past its grace, or the call over SD_JOB_TIMEOUT (remembered)."""
        if self.worker.past_grace():
            return True
        deadline = self.worker.job_deadline
        self.timed_out = deadline is not None and time.monotonic() > deadline
        return self.timed_out

    def leave(self, run: JobRun) -> None:
        """`run` is out (cancelled, or its claim lost); in a batch that goes on, it is
        settled now, so its page need not wait for the others."""
        run.out = True
        if self.going():
            run.writer.close()
            self.settle_interrupted(run.job)
            run.settled = True

    def settle_interrupted(self, job: ClaimedJob) -> None:
        settle_interrupted(job, timed_out=self.timed_out, stopping=self.worker.stopping.is_set())

    def save(self, images, backend) -> None:
        """Each job still in the call completes with its image (and its metadata: the
        backend's VAE; none for an upscale job); the others, left while the call went on,
        are settled now if they were not yet."""
        for run, image in zip(self.runs, images, strict=True):
            session = run.job.session
            if run.out:
                if not run.settled:
                    self.settle_interrupted(run.job)
                continue
            metadata = {
                "model_hash": None if session.mode == "upscale" else model_hash(session.model),
                "lora_hashes": hashes_text(session.prompt, session.negative_prompt),
                "vae": vae_fields(backend.vae_used) if backend is not None else None,
                "ti_hashes": ti_hashes(session.prompt, session.negative_prompt, session.model),
            }
            if run.job.complete(image, deadline=self.worker.job_deadline, **metadata):
                logger.info("Completed session %s", session.pk)

    def close(self) -> None:
        for run in self.runs:
            run.writer.close()

    def abandon(self) -> None:
        for run in self.runs:
            run.writer.abandon()


def request_of(session) -> GenerationRequest:
    """The pipeline's request: the session's values of the spec's `request` parameters,
    with its input images fitted to the output size (and the mask blurred)."""
    values = {name: getattr(session, name) for name in REQUEST_NAMES}
    size = (session.width, session.height)

    def input_image(field, mode: str):
        with field.open("rb") as file:
            return fitted(Image.open(file).convert(mode), size, session.resize_mode)

    if session.mode == "upscale":  # the image as it is: the upscale sets the size
        with session.init_image.open("rb") as file:
            values["init_image"] = Image.open(file).convert("RGB")
    elif session.init_image:
        values["init_image"] = input_image(session.init_image, "RGB")
        if session.mask_image:
            mask = input_image(session.mask_image, "L")
            values["mask_image"] = blurred_mask(mask, session.mask_blur)
    values["controlnet"] = tuple(control_units(session))
    return GenerationRequest(**values)


def control_units(session) -> list:
    """The session's ControlNet units with their images as stored (the pipeline runs
    their preprocessors)."""
    units = []
    for unit in session.controlnet or ():
        with default_storage.open(unit["image"], "rb") as file:
            image = Image.open(file).convert("RGB")
        units.append(ControlUnit(**{**unit, "image": image}))
    return units
