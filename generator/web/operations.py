"""What an operator watches, read from the rows: the metrics (/metrics) and the /ops page.

Both read the same functions, so the page and Prometheus never disagree. The
histograms of finished jobs (job, step and queue-wait seconds) are built from
the sessions themselves: each process adds the sessions that ended since its
last read, so the counts only grow, as Prometheus expects of a histogram, and
every web process reports the same figures.
"""

import threading
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.utils import floatToGoString

from ..disk import media_problem, media_usage, room_problem
from ..models import FINISHED_STATUSES, GenerationSession, Status, WorkerRecord

JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def session_counts() -> dict[str, int]:
    """Sessions by status, every status present (zero when none)."""
    counts = dict(
        GenerationSession.objects.values_list("status").annotate(n=Count("pk")).order_by()
    )
    return {status: counts.get(status, 0) for status in Status.values}


def workers() -> list[dict]:
    """Every registered worker: alive or not, what it serves, its current job and bar."""
    running = {
        session.worker_id: session
        for session in GenerationSession.objects.running().only(
            "pk", "prompt", "worker_id", "current_step", "total_steps", "phase", "model", "backend"
        )
    }
    rows = []
    for worker in WorkerRecord.objects.order_by("id"):
        job = running.get(worker.id)
        rows.append(
            {
                "id": worker.id,
                "host": worker.host,
                "alive": worker.is_alive(),
                "ready": worker.ready,
                "cannot_load": worker.cannot_load,
                "models": worker.served_models.splitlines() or ["any"],
                "loaded": sorted(worker.loaded_keys()),
                "backends": worker.served_backends.split(",")
                if worker.served_backends
                else ["any"],
                "last_seen_at": worker.last_seen_at.isoformat(),
                "job": None
                if job is None
                else {
                    "session_id": str(job.pk),
                    "prompt": job.prompt[:120],
                    "model": job.model,
                    "backend": job.backend,
                    "phase": job.phase,
                    "current_step": job.current_step,
                    "total_steps": job.total_steps,
                    "percentage": job.percentage,
                },
            }
        )
    return rows


def queue_summary() -> dict:
    pending = GenerationSession.objects.pending()
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    by_model = dict(pending.values_list("model").annotate(n=Count("pk")).order_by())
    return {
        "depth": sum(by_model.values()),
        "oldest_wait_seconds": (timezone.now() - oldest).total_seconds() if oldest else None,
        "by_model": by_model,
    }


def last_hour() -> dict:
    """Jobs ended per minute over the last hour (oldest first), and the failures among them."""
    now = timezone.now()
    since = now - timedelta(hours=1)
    ended = GenerationSession.objects.filter(
        status__in=FINISHED_STATUSES, finished_at__gte=since
    ).values_list("status", "finished_at")
    per_minute = [0] * 60
    failed = completed = 0
    for status, finished_at in ended:
        minute = min(59, int((finished_at - since).total_seconds() // 60))
        per_minute[minute] += 1
        failed += status == Status.FAILED
        completed += status == Status.COMPLETED
    return {
        "completed": completed,
        "failed": failed,
        "jobs_per_minute": round(completed / 60, 2),
        "per_minute": per_minute,
    }


def snapshot() -> dict:
    """Everything the /ops page shows."""
    return {
        "time": timezone.now().isoformat(),
        "sessions": session_counts(),
        "workers": workers(),
        "queue": queue_summary(),
        "last_hour": last_hour(),
        "media_bytes": media_usage(),
        "disk_problem": disk_problem(),
    }


def disk_problem() -> str | None:
    """A disk too full for new work, with its path and free space (for staff), or None."""
    problem = room_problem() or media_problem()
    return None if problem is None else str(problem)


@dataclass
class Histogram:
    buckets: tuple
    counts: dict = field(default_factory=dict)  # labels -> [per-bucket counts..., +Inf]
    sums: dict = field(default_factory=dict)

    def observe(self, labels: tuple, value: float) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        counts[index] += 1
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def cumulative(self, labels: tuple) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip(
            [*map(floatToGoString, self.buckets), "+Inf"], self.counts[labels], strict=True
        ):
            total += count
            out.append((bound, total))
        return out


class FinishedJobs:
    """The job, step and queue-wait histograms, grown by the sessions that ended since last read."""

    def __init__(self):
        self.jobs = Histogram(JOB_BUCKETS)
        self.steps = Histogram(STEP_BUCKETS)
        self.waits = Histogram(WAIT_BUCKETS)
        self._seen_until = None
        self._seen_at_edge: set = set()
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            rows = GenerationSession.objects.filter(
                status=Status.COMPLETED, started_at__isnull=False, finished_at__isnull=False
            )
            if self._seen_until is not None:
                rows = rows.filter(finished_at__gte=self._seen_until)
            fields = ("pk", "model", "backend", "width", "height", "step_seconds")
            fields += ("created_at", "started_at", "finished_at")
            for row in rows.order_by("finished_at").values_list(*fields).iterator(2000):
                pk, model, backend, width, height, steps, created, started, finished = row
                if pk in self._seen_at_edge:
                    continue
                if finished != self._seen_until:
                    self._seen_until, self._seen_at_edge = finished, set()
                self._seen_at_edge.add(pk)
                self.jobs.observe((model, backend), (finished - started).total_seconds())
                self.waits.observe((), max(0.0, (started - created).total_seconds()))
                size = f"{width}x{height}"
                for seconds in steps or ():
                    self.steps.observe((model, backend, size), float(seconds))


finished_jobs = FinishedJobs()
