"""Creating and reading generation sessions: the rules the web, the CLI and tests share."""

import secrets

from django.conf import settings

from .estimates import expected_seconds
from .models import GenerationSession, Status
from .pipelines.sources import DEMO_MODEL


def default_size(model: str) -> int:
    """The demo model is trained for nothing, so it gets the small, fast size."""
    return 256 if model == DEMO_MODEL else 512


def session_create(
    *,
    prompt: str,
    negative_prompt: str = "",
    steps: int = 20,
    guidance_scale: float = 7.5,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
    scheduler: str = "Euler",
    backend: str | None = None,
    model: str | None = None,
    owner=None,
    owner_key: str = "",
) -> GenerationSession:
    model = model or settings.SD_MODEL
    backend = backend or settings.SD_BACKEND
    width = width or default_size(model)
    height = height or default_size(model)
    session = GenerationSession(
        owner=owner,
        owner_key=owner_key,
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=secrets.randbelow(2**32) if seed is None else seed,
        scheduler=scheduler,
        backend=backend,
        model=model,
        total_steps=steps,
        expected_seconds=expected_seconds(model, backend, width, height, steps),
    )
    session.full_clean()
    session.save()
    return session


def session_as_dict(session: GenerationSession, queue_position: int | None = None) -> dict:
    from .heartbeat import why_waiting

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
        "queue_position": queue_position,
        "restarts": session.restarts,
        "restart_reason": session.restart_reason or None,
        "preview_url": session.preview.url if session.preview else None,
        "created_at": session.created_at.isoformat(),
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "finished_at": session.finished_at.isoformat() if session.finished_at else None,
        "parameters": session.parameters(),
        "progress_url": f"/api/progress/{session.pk}",
    }


def own_queue(viewer) -> list[dict]:
    """The viewer's queued and running sessions, oldest first, each with its place or bar."""
    from .heartbeat import why_waiting
    from .progress import queue_annotations, snapshot_of

    rows = (
        GenerationSession.objects.filter(viewer.own_sessions())
        .filter(status__in=(Status.PENDING, Status.RUNNING))
        .annotate(**queue_annotations())
        .order_by("created_at")
    )
    queue = []
    for row in rows:
        snapshot = snapshot_of(row, previews=False)
        queue.append(
            {
                "session_id": str(row.pk),
                "prompt": row.prompt,
                "status": row.status,
                "phase": row.phase,
                "current_step": row.current_step,
                "total_steps": row.total_steps,
                "percentage": row.percentage,
                "queue_position": snapshot.queue_position,
                "eta_seconds": snapshot.eta_seconds,
                "waiting_for": why_waiting(row) if snapshot.worker_lost else None,
                "url": row.get_absolute_url(),
            }
        )
    return queue
