"""The database is the queue: claiming sessions and writing a claimed job's state.

Every write of a running job is conditional on the claim token, so a worker that
lost its claim (cancelled, recovered by another worker) changes nothing.
"""

import io
import logging
import time
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from .models import GenerationSession, Status

logger = logging.getLogger(__name__)


class ClaimedJob:
    """A session this worker holds; its methods are the only writes a worker makes."""

    def __init__(self, session: GenerationSession):
        self.session = session
        self.token = session.claim_token

    def _update(self, **fields) -> bool:
        """Write `fields` if the claim still holds; False when it was lost."""
        return bool(
            GenerationSession.objects.filter(
                pk=self.session.pk, claim_token=self.token, status=Status.RUNNING
            ).update(**fields)
        )

    def record_phase(self, phase: str) -> bool:
        return self._update(phase=phase)

    def record_step(self, step: int, total: int) -> bool:
        # After the last step the pipeline decodes the latents: say so, so the
        # page does not sit at a silent 100 %.
        phase = "decoding" if step >= total else "generating"
        return self._update(
            current_step=step, total_steps=total, step_recorded_at=time.time(), phase=phase
        )

    def complete(self, image) -> bool:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = default_storage.save(
            GenerationSession.image.field.generate_filename(None, f"{self.session.pk}.png"),
            ContentFile(buffer.getvalue()),
        )
        done = self._update(
            status=Status.COMPLETED, phase="", image=name, finished_at=timezone.now()
        )
        if not done:  # nobody will ever link to it
            default_storage.delete(name)
        return done

    def fail(self, message: str) -> bool:
        return self._update(
            status=Status.FAILED, phase="", error=message[:5000], finished_at=timezone.now()
        )


def claim_next(worker_id: str) -> ClaimedJob | None:
    """Claim the oldest pending session, or return None when there is none."""
    with transaction.atomic():
        candidates = GenerationSession.objects.filter(status=Status.PENDING).order_by("created_at")
        if connection.features.has_select_for_update_skip_locked:
            # PostgreSQL: concurrent workers skip each other's candidate rows
            # instead of queueing on them. (SQLite's IMMEDIATE transaction
            # already serializes this block.)
            candidates = candidates.select_for_update(skip_locked=True)
        pk = candidates.values_list("pk", flat=True).first()
        if pk is None:
            return None
        token = uuid.uuid4()
        # The compare-and-set: only a row that is still pending changes hands.
        claimed = GenerationSession.objects.filter(pk=pk, status=Status.PENDING).update(
            status=Status.RUNNING,
            claim_token=token,
            worker_id=worker_id,
            started_at=timezone.now(),
            attempts=F("attempts") + 1,
            phase="starting",
        )
    if claimed != 1:
        return None
    return ClaimedJob(GenerationSession.objects.get(pk=pk))
