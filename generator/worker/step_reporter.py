"""A running job's step callbacks, turned into progress writes: step times, ETA, previews.

The denoising loop never waits on the database: the step callback hands the step
(and, when one is due, the small RGB preview, projected where the latents are) to
the job's ProgressWriter thread and returns at once. The writer writes the newest
step it holds: if steps come faster than the database takes them, or closer than
SD_STEP_WRITE_INTERVAL to the previous write, the ones in between are skipped
(coalesced), but the last step is always written, and the other writes (the start
of denoising, a phase) keep their order among the steps and are never held back.
The callback stops the pipeline as soon as the writer learns that the job was
cancelled or its claim lost.

Why an interval: each write takes the GIL from the denoising thread a few times (the
writer wakes, then reads the database's answer), and each handoff puts that thread
to sleep and back. At 20 ms steps, one write a step cost a 40-step job 9 % of its
time (`bench.progress_overhead --compare tracking`); 20 writes a second look as
smooth on the page, and steps slower than the interval are all written.
"""

import logging
import math
import threading
import time
from collections.abc import Callable

from django.db import connections

from ..estimates import remaining_seconds
from ..pipelines.previews import Preview, encode_preview, rgb_to_image, start_preview

logger = logging.getLogger(__name__)


class ProgressWriter(threading.Thread):
    """Writes one job's steps from a thread of its own, the newest first-come."""

    def __init__(self, job, interval: float = 0.0, times_interval: float = 0.0):
        """`interval`: the fewest seconds from one write to the next step's write;
        `times_interval`: from one write of the step times to the next (the last step's
        always has them)."""
        super().__init__(name="progress-writer", daemon=True)
        self.job = job
        self.interval = interval
        self.pending: list[dict] = []
        """What is still to write, in order; only the newest of consecutive steps is kept."""
        self.changed = threading.Condition()
        self.resting = False
        """Waiting out the interval: a new step need not wake the writer."""
        self.last_write = -math.inf
        self.times_interval = times_interval
        self.last_times_write = -math.inf
        self.writing = False
        self.closed = False
        self.keep_going = True
        """False once a write found the job cancelled or the claim lost: stop the pipeline."""
        self.written: list[int] = []
        """The steps written, in order (what the tests and the benchmark read)."""

    def submit(self, step: int, total: int, preview_rgb=None, **fields) -> bool:
        """Hand over a step; returns at once whether the job should go on."""
        with self.changed:
            held = self.pending[-1] if self.pending and "step" in self.pending[-1] else None
            if held is not None:
                self.pending.pop()  # coalesced: the newer step replaces it
                if preview_rgb is None and held["preview_rgb"] is not None:
                    # A skipped step's preview still shows, with the newer numbers.
                    preview_rgb, fields["preview_step"] = held["preview_rgb"], held["preview_step"]
            item = {"step": step, "total": total, "preview_rgb": preview_rgb, **fields}
            item.setdefault("preview_step", step)
            return self._add(item)

    def submit_call(self, write: Callable[..., bool], *args) -> bool:
        """Hand over another write of the job (`job.begin`, `job.record_phase`), kept in order;
        it returns, like a step's write, whether the job should go on."""
        with self.changed:
            return self._add({"call": write, "args": args})

    def _add(self, item: dict) -> bool:
        self.pending.append(item)
        if not self.resting or not self.can_wait(item):
            self.changed.notify()
        return self.keep_going

    @staticmethod
    def can_wait(item: dict) -> bool:
        """A step before the last: it may wait for the interval, and be replaced meanwhile."""
        return "step" in item and item["step"] < item["total"]

    def run(self) -> None:
        try:
            while True:
                with self.changed:
                    while not self.pending and not self.closed:
                        self.changed.wait()
                    if not self.pending:
                        return
                    rest = self.last_write + self.interval - time.monotonic()
                    if rest > 0 and len(self.pending) == 1 and self.can_wait(self.pending[0]):
                        self.resting = True
                        self.changed.wait(rest)  # woken early by anything that cannot wait
                        self.resting = False
                        continue
                    item = self.pending.pop(0)
                    self.writing = True
                    self.last_write = time.monotonic()
                try:
                    if self.keep_going:
                        going = self.write(item)
                        with self.changed:
                            self.keep_going = self.keep_going and going
                finally:
                    with self.changed:
                        self.writing = False
                        self.changed.notify_all()
        finally:
            connections.close_all()

    def write(self, item: dict) -> bool:
        if "call" in item:
            return item["call"](*item["args"])
        preview = None
        if item["preview_rgb"] is not None:
            try:
                preview = encode_preview(rgb_to_image(item["preview_rgb"]))
            except Exception:  # a preview is a nicety: the step is written without
                logger.exception("Live preview failed")
        step_seconds = item["step_seconds"]
        now = time.monotonic()
        if item["step"] < item["total"] and now - self.last_times_write < self.times_interval:
            step_seconds = None  # left as written last; the last step writes them all
        else:
            self.last_times_write = now
        written = self.job.record_step(
            item["step"],
            item["total"],
            step_seconds=step_seconds,
            eta_seconds=item["eta_seconds"],
            preview=preview,
            preview_step=item["preview_step"],
            recorded_at=item["recorded_at"],
        )
        self.written.append(item["step"])
        return written

    def flush(self) -> bool:
        """Wait until every step handed over is written; whether the job should go on."""
        with self.changed:
            while self.pending or self.writing:
                self.changed.wait()
            return self.keep_going

    def close(self) -> None:
        self.flush()
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.join(timeout=30)

    def abandon(self) -> None:
        """Stop once the job is settled (completed, failed, cancelled, back in the queue).

        What is still pending would find the job settled and change nothing (every write
        is fenced by the claim and the running status; the completion writes the last
        step itself), so it is dropped, and nobody waits: the thread ends after the
        write it may be in. With the database a few ms away, waiting here for the last
        step's and phases' writes was most of what the distance cost a job.
        """
        with self.changed:
            self.pending.clear()
            self.closed = True
            self.changed.notify_all()


class StepReporter:
    def __init__(
        self,
        job,
        *,
        seconds_after_steps: float = 0.0,
        previews: bool = True,
        preview_interval: float = 0.5,
        clock=time.monotonic,
        writer: ProgressWriter | None = None,
    ):
        """`writer`: the job's ProgressWriter (the worker's way); without one each step is
        written before the call returns."""
        self.job = job
        self.seconds_after_steps = seconds_after_steps
        self.previews = previews
        self.preview_interval = preview_interval
        self.clock = clock
        self.writer = writer
        self.step_seconds: list[float] = []
        self.last_tick = clock()
        self.last_preview = -math.inf
        self.in_flight: Preview | None = None
        """A preview on its way from the GPU, handed over at the first step it has landed by."""

    def start(self) -> None:
        """The pipeline starts now: the first step is timed from here, not from the model load."""
        self.last_tick = self.clock()

    def __call__(self, step: int, total: int, latents=None) -> bool:
        """Record the step; False tells the pipeline to stop (cancelled or claim lost)."""
        now = self.clock()
        self.step_seconds.append(round(now - self.last_tick, 4))
        self.last_tick = now
        fields = {
            "recorded_at": time.time(),
            "step_seconds": list(self.step_seconds),
            "eta_seconds": remaining_seconds(
                self.step_seconds, step, total, self.seconds_after_steps
            ),
        }
        ready = self.preview_of(latents, step, now)
        rgb = None
        if ready is not None:
            rgb, fields["preview_step"] = ready.rgb, ready.step
        if self.writer is not None:
            return self.writer.submit(step, total, preview_rgb=rgb, **fields)
        preview = encode_preview(rgb_to_image(rgb)) if rgb is not None else None
        return self.job.record_step(step, total, preview=preview, **fields)

    def preview_of(self, latents, step: int, now: float) -> Preview | None:
        """The preview to hand over with this step: on a CPU this step's, when one is due;
        from a GPU, one taken at an earlier step whose copy has landed since."""
        # Time-throttled, and always from the newest latents: a slow step never
        # queues up stale pictures; one at a time on its way from a GPU.
        due = now - self.last_preview >= self.preview_interval
        if self.previews and latents is not None and due and self.in_flight is None:
            self.last_preview = now
            try:
                self.in_flight = start_preview(latents, step)
            except Exception:  # a preview is a nicety: the job goes on without
                logger.exception("Live preview failed; no more previews for this job")
                self.previews = False
        if self.in_flight is not None and self.in_flight.ready():
            ready, self.in_flight = self.in_flight, None
            return ready
        return None
