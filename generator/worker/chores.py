"""A worker's background chores, on a thread of their own: webhooks and retention.

Webhooks are posted here, never on the job's thread, so a slow receiver does not
hold up the next job; the delivery state is in the database (`webhooks`), so a
worker that restarts picks up where it stopped. With SD_KEEP_DAYS set, old
sessions are pruned once an hour (`retention`).
"""

import logging
import threading
import time

from django.conf import settings
from django.db import connections

from .. import retention, webhooks
from ..db import OutageLog

logger = logging.getLogger(__name__)

WEBHOOK_INTERVAL = 1.0
PRUNE_INTERVAL = 3600.0


class Chores(threading.Thread):
    def __init__(self):
        super().__init__(name="chores", daemon=True)
        self._stop_event = threading.Event()
        self._next_prune = time.monotonic() + 60  # not in the middle of a start-up
        self.outages = OutageLog("Worker chores")

    def run(self) -> None:
        try:
            while not self._stop_event.wait(WEBHOOK_INTERVAL):
                self.once()
        finally:
            connections.close_all()

    def once(self) -> None:
        try:
            webhooks.deliver_due()
            if settings.SD_KEEP_DAYS and time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL
                cutoff = retention.cutoff(settings.SD_KEEP_DAYS)
                rows, freed = retention.prune(retention.ended_before(cutoff))
                if rows:
                    logger.info(
                        "Pruned %d sessions older than %s days", rows, settings.SD_KEEP_DAYS
                    )
        except Exception as exc:  # the database may be away: try again next time
            self.outages.failed(exc)
        else:
            self.outages.succeeded()

    def stop(self) -> None:
        self._stop_event.set()
