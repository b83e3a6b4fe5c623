"""The watchdog: a worker whose job's step will not end restarts itself instead of hanging.

SD_JOB_TIMEOUT is enforced between steps (`batch.py`); a single step that never
returns (a stuck driver, a size far past SD_MAX_PIXELS) never reaches that check.
This thread notices the job SD_WATCHDOG_GRACE seconds past its deadline, fails it
with a readable reason, and replaces the process with a fresh one (exec), so the
worker keeps serving the queue under any supervisor, or none.
"""

import logging
import os
import sys
import threading
import time

from django.conf import settings

from .failures import timeout_reason

logger = logging.getLogger(__name__)


def restart_process() -> None:
    os.execv(sys.executable, [sys.executable, *sys.argv])


class Watchdog(threading.Thread):
    def __init__(self, worker, restart=restart_process, interval: float = 1.0):
        super().__init__(name="watchdog", daemon=True)
        self.worker = worker
        self.restart = restart
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if self.stuck():
                self.bite()
                return

    def stuck(self) -> bool:
        deadline = self.worker.job_deadline
        return (
            self.worker.current_jobs
            and deadline is not None
            and time.monotonic() > deadline + settings.SD_WATCHDOG_GRACE
        )

    def bite(self) -> None:
        from .heartbeat import unregister_worker

        jobs = list(self.worker.current_jobs)
        logger.critical(
            "Session(s) %s: a step has not ended %s s past SD_JOB_TIMEOUT; restarting the worker",
            ", ".join(str(job.session.pk) for job in jobs),
            settings.SD_WATCHDOG_GRACE,
        )
        try:
            for job in jobs:
                job.fail(timeout_reason() + " A step would not end, so the worker restarted.")
            unregister_worker(self.worker.worker_id)
        finally:
            self.restart()

    def stop(self) -> None:
        self._stop_event.set()
