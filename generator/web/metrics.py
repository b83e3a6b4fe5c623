"""GET /metrics: Prometheus's text format, for the networks in SD_METRICS_ALLOWED only.

Two kinds of figures. From the database, the same whichever process answers:
sessions by status, live workers, and the histograms of finished jobs
(`operations`). From this process: its open progress streams, its hub's
read ticks, and the refusals and time-outs of `capacity`. Under several
uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to an empty folder and
prometheus-client sums the processes' own figures (streams are summed over
live processes); without it, each process reports its own.
"""

import os

from django.http import HttpResponse
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..addresses import private_allowed
from ..models import WorkerRecord
from . import operations
from .api_errors import error_response

PROGRESS_STREAMS = Gauge(
    "sdsite_progress_streams",
    "Progress streams open in this web process.",
    multiprocess_mode="livesum",
)
HUB_TICK = Histogram(
    "sdsite_hub_tick_seconds",
    "How long one read of the watched sessions took in the progress hub.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


class DatabaseCollector(Collector):
    """The figures read from the rows, at each scrape."""

    def collect(self):
        sessions = GaugeMetricFamily("sdsite_sessions", "Sessions by status.", labels=["status"])
        for status, count in operations.session_counts().items():
            sessions.add_metric([status], count)
        yield sessions
        yield GaugeMetricFamily(
            "sdsite_workers_alive",
            "Workers whose heartbeat is within the lease.",
            value=WorkerRecord.objects.alive().count(),
        )
        yield GaugeMetricFamily(
            "sdsite_workers_unhealthy",
            "Live workers that failed to load a model they serve (see /ops).",
            value=WorkerRecord.objects.alive().exclude(cannot_load={}).count(),
        )
        finished = operations.finished_jobs
        finished.refresh()
        for name, help_text, histogram, labels in (
            (
                "sdsite_job_seconds",
                "Started to finished, completed jobs.",
                finished.jobs,
                ["model", "backend"],
            ),
            (
                "sdsite_step_seconds",
                "One denoising step, completed jobs.",
                finished.steps,
                ["model", "backend", "size"],
            ),
            ("sdsite_queue_wait_seconds", "Queued to started, completed jobs.", finished.waits, []),
        ):
            family = HistogramMetricFamily(name, help_text, labels=labels)
            for key in sorted(histogram.counts):
                family.add_metric(
                    list(key), histogram.cumulative(key), sum_value=histogram.sums[key]
                )
            yield family


def registry():
    combined = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(combined)
    else:
        combined.register(_ProcessCollector())
    combined.register(DatabaseCollector())
    return combined


class _ProcessCollector(Collector):
    """This process's own metrics (the default registry), beside the database's."""

    def collect(self):
        yield from REGISTRY.collect()


def metrics(request):
    if not private_allowed(request):
        return error_response(403, "Metrics are served to the networks in SD_METRICS_ALLOWED only.")
    return HttpResponse(
        generate_latest(registry()), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
