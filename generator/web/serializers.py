"""Sessions as the web answers them: the JSON of one session and of a viewer's own queue.

Reads only; the commands that change a session live in `services`.
"""

from django.urls import reverse

from ..estimates import queue_place
from ..models import GenerationSession, Status
from ..services import WORKER_LOST_WAITING, why_waiting


def session_as_dict(session: GenerationSession) -> dict:
    """The session as the API answers it (POST /api/generate, GET /api/sessions/<id>, the page)."""
    waiting_for = why_waiting(session)
    running = session.status == Status.RUNNING
    return {
        "waiting_for": waiting_for,
        "session_id": str(session.pk),
        "status": session.status,
        "phase": session.phase,
        "current_step": session.current_step,
        "total_steps": session.total_steps,
        "percentage": session.percentage,
        "image_url": session.image_url,
        "error": session.error or None,
        "eta_seconds": session.eta_seconds if running and not waiting_for else None,
        "mode": session.mode,
        "restarts": session.restarts,
        "restart_reason": session.restart_reason or None,
        "preview_url": session.preview_url,
        "created_at": session.created_at.isoformat(),
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "finished_at": session.finished_at.isoformat() if session.finished_at else None,
        "parameters": session.parameter_values(),
        "control_images": session.control_images,
        "progress_url": reverse("generator:session-progress", args=[session.pk]),
    }


def own_queue(viewer) -> list[dict]:
    """The viewer's queued and running sessions, oldest first, each with its place or bar."""
    rows = (
        GenerationSession.objects.owned_by(viewer)
        .unfinished()
        .with_queue_place()
        .order_by("created_at")
    )
    queue = []
    for row in rows:
        position, eta = queue_place(row)
        queue.append(
            {
                "session_id": str(row.pk),
                "prompt": row.prompt,
                "status": row.status,
                "phase": row.phase,
                "current_step": row.current_step,
                "total_steps": row.total_steps,
                "percentage": row.percentage,
                "queue_position": position,
                "eta_seconds": eta,
                "waiting_for": WORKER_LOST_WAITING if row.worker_lost else None,
                "url": row.get_absolute_url(),
            }
        )
    return queue
