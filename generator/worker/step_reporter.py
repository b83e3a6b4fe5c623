"""A running job's step callbacks, turned into progress writes: step times, ETA, previews."""

import logging
import math
import time

from ..estimates import remaining_seconds
from ..pipelines.previews import encode_preview, latents_to_image

logger = logging.getLogger(__name__)


class StepReporter:
    def __init__(
        self,
        job,
        *,
        seconds_after_steps: float = 0.0,
        previews: bool = True,
        preview_interval: float = 0.5,
        clock=time.monotonic,
    ):
        self.job = job
        self.seconds_after_steps = seconds_after_steps
        self.previews = previews
        self.preview_interval = preview_interval
        self.clock = clock
        self.step_seconds: list[float] = []
        self.last_tick = clock()
        self.last_preview = -math.inf

    def start(self) -> None:
        """The pipeline starts now: the first step is timed from here, not from the model load."""
        self.last_tick = self.clock()

    def __call__(self, step: int, total: int, latents=None) -> bool:
        """Record the step; False tells the pipeline to stop (cancelled or claim lost)."""
        now = self.clock()
        self.step_seconds.append(round(now - self.last_tick, 4))
        self.last_tick = now
        return self.job.record_step(
            step,
            total,
            step_seconds=self.step_seconds,
            eta_seconds=remaining_seconds(self.step_seconds, step, total, self.seconds_after_steps),
            preview=self.preview_of(latents, now),
        )

    def preview_of(self, latents, now: float) -> bytes | None:
        # Time-throttled, and always from the newest latents: a slow step never
        # queues up stale pictures.
        if not self.previews or latents is None or now - self.last_preview < self.preview_interval:
            return None
        self.last_preview = now
        try:
            return encode_preview(latents_to_image(latents))
        except Exception:  # a preview is a nicety: the job goes on without
            logger.exception("Live preview failed; no more previews for this job")
            self.previews = False
            return None
