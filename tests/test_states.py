"""A job's state machine (generator/states.py), on the real database: each transition starts
only from its own states, a worker's only under its claim, and no other module writes
`status`."""

import ast
import uuid
from pathlib import Path

import pytest
from django.db import connection

from generator.models import GenerationSession, Status
from generator.states import REQUEUE_RESET

pytestmark = pytest.mark.django_db(transaction=True)

GENERATOR = Path(__file__).resolve().parent.parent / "generator"
STATES = ("pending", "running", "completed", "failed", "cancelled")


def jobs():
    return GenerationSession.objects


def in_state(make_session, state: str) -> GenerationSession:
    """A job brought to `state` by the transitions themselves."""
    session = make_session()
    if state != Status.PENDING:
        if state == Status.CANCELLED:
            assert jobs().cancel(session.pk)
            return reload(session)
        assert jobs().claim(session.pk, "worker-a")
        token = reload(session).claim_token
        if state == Status.COMPLETED:
            assert jobs().finish(session.pk, token, "images/done.png")
        elif state == Status.FAILED:
            assert jobs().fail(session.pk, token, "it broke")
    return reload(session)


def reload(session) -> GenerationSession:
    return GenerationSession.objects.get(pk=session.pk)


def row(session) -> dict:
    return GenerationSession.objects.filter(pk=session.pk).values().get()


def cancel_asked_then_finished(pk, token):
    jobs().ask_to_cancel(pk)
    return jobs().finish_cancelled(pk, token)


def expire(pk, token):
    return jobs().expire(pk, token, attempts=0, restarts=0, cancel_requested=False, max_attempts=3)


# name: (call(pk, token), allowed from-states, state after)
TRANSITIONS = {
    "claim": (lambda pk, token: jobs().claim(pk, "worker-b"), {"pending"}, "running"),
    "cancel": (lambda pk, token: jobs().cancel(pk), {"pending"}, "cancelled"),
    "ask_to_cancel": (lambda pk, token: jobs().ask_to_cancel(pk), {"running"}, "running"),
    "requeue": (lambda pk, token: jobs().requeue(pk, 9.0), {"failed", "cancelled"}, "pending"),
    "start": (lambda pk, token: jobs().start(pk, token), {"running"}, "running"),
    "progress": (
        lambda pk, token: jobs().progress(pk, token, current_step=2, total_steps=4),
        {"running"},
        "running",
    ),
    "finish": (
        lambda pk, token: jobs().finish(pk, token, "images/x.png"),
        {"running"},
        "completed",
    ),
    "fail": (lambda pk, token: jobs().fail(pk, token, "no"), {"running"}, "failed"),
    "finish_cancelled": (cancel_asked_then_finished, {"running"}, "cancelled"),
    "release": (lambda pk, token: jobs().release(pk, token), {"running"}, "pending"),
    "expire": (expire, {"running"}, "pending"),
}
FENCED = ("start", "progress", "finish", "fail", "finish_cancelled", "release", "expire")


@pytest.mark.any_database
@pytest.mark.parametrize("name", TRANSITIONS)
@pytest.mark.parametrize("state", STATES)
def test_each_transition_happens_from_its_own_states_and_refuses_every_other(
    make_session, name, state
):
    call, allowed, after = TRANSITIONS[name]
    session = in_state(make_session, state)
    before = row(session)
    happened = call(session.pk, session.claim_token)
    if state in allowed:
        assert happened
        assert reload(session).status == after
    else:
        assert not happened
        assert row(session) == before  # refused: nothing at all changed


@pytest.mark.any_database
@pytest.mark.parametrize("name", FENCED)
def test_a_worker_transition_with_a_stale_claim_token_changes_nothing(make_session, name):
    call, _, _ = TRANSITIONS[name]
    session = in_state(make_session, "running")
    if name == "finish_cancelled":
        jobs().ask_to_cancel(session.pk)  # so that only the token refuses it
    before = row(session)
    assert not call(session.pk, uuid.uuid4())
    assert row(session) == before
    assert call(session.pk, session.claim_token)  # the holder's own token works


@pytest.mark.any_database
def test_a_claim_lost_to_a_release_fences_out_the_old_holder(make_session):
    session = in_state(make_session, "running")
    old = session.claim_token
    assert jobs().release(session.pk, old)
    assert jobs().claim(session.pk, "worker-b")
    assert not jobs().fail(session.pk, old, "zombie")
    assert not jobs().progress(session.pk, old, current_step=3)
    assert reload(session).status == Status.RUNNING and reload(session).worker_id == "worker-b"


@pytest.mark.any_database
def test_every_way_back_to_the_queue_resets_the_same_fields(make_session):
    dirty = {"current_step": 3, "total_steps": 4, "step_recorded_at": 1.5}
    dirty |= {"step_seconds": [0.5], "eta_seconds": 2.0, "phase": "denoising"}
    requeued, released, expired = (in_state(make_session, "running") for _ in range(3))
    for session in (requeued, released, expired):
        assert jobs().progress(session.pk, session.claim_token, **dirty)
    assert jobs().fail(requeued.pk, requeued.claim_token, "x")
    assert jobs().requeue(requeued.pk, 9.0)
    assert jobs().release(released.pk, released.claim_token)
    assert expire(expired.pk, expired.claim_token) == Status.PENDING
    for session in (requeued, released, expired):
        values = row(session)
        assert {name: values[name] for name in REQUEUE_RESET} == REQUEUE_RESET


@pytest.mark.any_database
def test_progress_refuses_fields_that_are_not_progress():
    with pytest.raises(ValueError, match="status"):
        jobs().progress(uuid.uuid4(), uuid.uuid4(), status=Status.COMPLETED)


def status_writes(path: Path) -> list[str]:
    """Where `path` writes a job's status: `.status = ...`, `status=` given to a write
    (`update`, `create`, a model's constructor...), a `"status": Status.X` entry of a dict of
    changes, or "status" among `update_fields`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    writers = {"update", "create", "get_or_create", "update_or_create", "bulk_update"}
    found = []

    def where(node):
        return f"{path.relative_to(GENERATOR.parent)}:{node.lineno}"

    def is_status_member(node):
        return (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Status"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                found.append(where(node))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            keywords = {k.arg: k.value for k in node.keywords}
            if "status" in keywords and (name in writers or name == "GenerationSession"):
                found.append(where(node))
            fields = keywords.get("update_fields")
            if fields is not None and "'status'" in ast.unparse(fields).replace('"', "'"):
                found.append(where(node))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "status"
                    and is_status_member(value)
                ):
                    found.append(where(node))
    return found


@pytest.mark.any_database
def test_no_module_but_the_state_machine_writes_a_job_status():
    sources = [
        path
        for path in GENERATOR.rglob("*.py")
        if path.name != "states.py" and "migrations" not in path.parts
    ]
    assert len(sources) > 30  # the scan saw the app
    writes = [where for path in sources for where in status_writes(path)]
    assert writes == []
    # ...and the scan does see a write where there is one.
    assert status_writes(GENERATOR / "states.py")


@pytest.mark.any_database
def test_the_admin_deletes_each_selected_job_through_the_service(
    admin_client, make_session, monkeypatch
):
    import generator.admin
    from generator import services

    deleted = []

    def session_delete(session):
        deleted.append(session.pk)
        services.session_delete(session)

    monkeypatch.setattr(generator.admin, "session_delete", session_delete)
    running = in_state(make_session, "running")
    done = in_state(make_session, "completed")
    response = admin_client.post(
        "/admin/generator/generationsession/",
        {"action": "delete_selected", "_selected_action": [running.pk, done.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert sorted(deleted) == sorted([running.pk, done.pk])
    assert not GenerationSession.objects.filter(pk__in=deleted).exists()
    # The running job's worker finds no row: its next write stops it.
    assert not jobs().progress(running.pk, running.claim_token, current_step=1)


def queue_notifications(listener, timeout: float) -> int:
    return sum(1 for _ in listener.notifies(timeout=timeout, stop_after=1))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_every_way_into_the_queue_wakes_workers_and_nothing_else_does(make_session):
    """The database sends the queue's NOTIFY (a trigger), so even a row queued by hand wakes
    the workers, and claims or progress do not."""
    import psycopg

    from generator.notify import QUEUE_CHANNEL, listener_conninfo

    with psycopg.connect(listener_conninfo(), autocommit=True) as listener:
        listener.execute(f"LISTEN {QUEUE_CHANNEL}")
        session = make_session()
        assert queue_notifications(listener, 10) == 1
        assert jobs().claim(session.pk, "worker-a")
        token = reload(session).claim_token
        assert jobs().progress(session.pk, token, current_step=1, total_steps=4)
        assert queue_notifications(listener, 0.5) == 0
        assert jobs().release(session.pk, token)
        assert queue_notifications(listener, 10) == 1
        # Not through the services at all: the trigger still announces it.
        GenerationSession.objects.create(prompt="by hand", steps=4, width=64, height=64, seed=1)
        assert queue_notifications(listener, 10) == 1
