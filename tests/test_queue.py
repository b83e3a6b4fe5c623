"""Claims, conditional writes, cancel and recovery, in process on the real database."""

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from generator.models import GenerationSession, Status, WorkerRecord
from generator.services import session_cancel
from generator.worker.claims import COLD_LOSSES_PER_ATTEMPT, claim_next, recover_lost_sessions

pytestmark = pytest.mark.django_db(transaction=True)


def live_worker(worker_id: str) -> WorkerRecord:
    return WorkerRecord.objects.create(
        id=worker_id, host="test", pid=1, last_seen_at=timezone.now()
    )


def test_a_claim_writes_a_fresh_token_and_denoising_counts_the_attempt(make_session):
    session = make_session()
    job = claim_next("worker-a")
    session.refresh_from_db()
    assert job.session.pk == session.pk
    assert session.status == Status.RUNNING
    assert session.worker_id == "worker-a"
    assert session.claim_token == job.token is not None
    assert session.attempts == 0  # loading the model spends nothing...
    assert job.begin() is True
    assert reload(session).attempts == 1  # ...denoising does
    assert claim_next("worker-b") is None  # nothing else is pending


def test_a_worker_lost_before_denoising_costs_the_job_no_attempt(make_session):
    session = make_session()
    for _ in range(3):  # a worker killed while loading its model, three times
        claim_next("cold")
        assert recover_lost_sessions(lease_seconds=30, max_attempts=2) == {session.pk: "pending"}
    assert (reload(session).attempts, reload(session).restarts) == (0, 3)
    # ...but not forever: after max_attempts * COLD_LOSSES_PER_ATTEMPT such losses it fails.
    outcomes = []
    while not outcomes or outcomes[-1] == "pending":
        claim_next("cold")
        outcomes.append(recover_lost_sessions(lease_seconds=30, max_attempts=2)[session.pk])
    assert reload(session).restarts + 1 == 2 * COLD_LOSSES_PER_ATTEMPT
    assert reload(session).error == "worker lost 10 times before the job could start"


def reload(session):
    return GenerationSession.objects.get(pk=session.pk)


def test_a_zombie_cannot_write_after_its_session_was_reclaimed(make_session):
    from PIL import Image

    session = make_session(steps=4)
    zombie = claim_next("zombie")
    zombie.record_step(1, 4)
    # The zombie stops beating (no worker row): another worker recovers the session.
    assert recover_lost_sessions(lease_seconds=30, max_attempts=3) == {session.pk: "pending"}
    live_worker("heir")
    heir = claim_next("heir")
    assert heir.token != zombie.token

    assert zombie.record_step(3, 4) is False
    assert zombie.fail("zombie says no") is False
    assert zombie.complete(Image.new("RGB", (8, 8))) is False
    session.refresh_from_db()
    assert (session.status, session.worker_id, session.error) == (Status.RUNNING, "heir", "")
    assert session.current_step == 0 and not session.image  # the heir starts over
    assert heir.record_step(2, 4) is True


def test_compiled_progress_writes_write_what_the_orm_writes_and_keep_the_fence(make_session):
    """A job's progress writes run SQL compiled once per kind of write (`CompiledUpdates`);
    each must leave the row exactly as the ORM's own update does, NULLs, JSON and file
    names included, and write nothing once the claim is lost or a cancel was asked."""
    from django.db.models import F

    from generator.services import session_cancel

    make_session(), make_session()
    compiled, orm = claim_next("compiled"), claim_next("orm")
    writes = [
        {"current_step": 1, "total_steps": 4, "phase": "denoising", "step_seconds": [0.5],
         "eta_seconds": None, "step_recorded_at": 1.5},
        {"current_step": 2, "total_steps": 4, "phase": "denoising", "step_seconds": [0.5, 0.25],
         "eta_seconds": 0.75, "step_recorded_at": 2.5},
        {"current_step": 3, "total_steps": 4, "phase": "denoising", "step_seconds": [],
         "eta_seconds": 0.5, "step_recorded_at": 3.5, "preview": "previews/p.jpg",
         "preview_step": 3},
        {"phase": "decoding"},
        {"current_step": 4, "total_steps": 4, "phase": "decoding", "step_seconds": [0.5],
         "eta_seconds": None, "step_recorded_at": 4.5},
    ]  # fmt: skip
    for fields in writes:
        assert compiled.writes.update(**fields) == 1
        assert orm._mine().filter(cancel_requested=False).update(**fields) == 1
        mine, theirs = reload(compiled.session), reload(orm.session)
        for name in fields:
            assert getattr(mine, name) == getattr(theirs, name), name
    assert len(compiled.writes.compiled) == 4  # the last write's kind was compiled already
    assert compiled.writes.update(attempts=F("attempts") + 1) == 1  # an expression: the ORM
    assert reload(compiled.session).attempts == 1

    session_cancel(compiled.session.pk)
    assert compiled.writes.update(**writes[1]) == 0  # a cancel was asked: nothing written
    assert reload(compiled.session).current_step == 4
    GenerationSession.objects.filter(pk=orm.session.pk).update(claim_token=None)
    assert orm.record_step(1, 4) is False  # the claim is lost: nothing written
    assert reload(orm.session).current_step == 4


def test_recovery_leaves_sessions_of_live_workers_alone(make_session):
    session = make_session()
    live_worker("alive")
    claim_next("alive")
    assert recover_lost_sessions(lease_seconds=30, max_attempts=2) == {}
    session.refresh_from_db()
    assert session.status == Status.RUNNING


def test_recovery_fails_a_session_that_used_all_its_attempts(make_session):
    session = make_session()
    claim_next("first").begin()
    recover_lost_sessions(lease_seconds=30, max_attempts=2)
    claim_next("second").begin()
    assert recover_lost_sessions(lease_seconds=30, max_attempts=2) == {session.pk: "failed"}
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert session.error == "worker lost (attempt 2 of 2)"


def test_recovery_removes_stale_worker_rows():
    stale = live_worker("stale")
    WorkerRecord.objects.filter(pk=stale.pk).update(
        last_seen_at=timezone.now() - timezone.timedelta(seconds=60)
    )
    live_worker("fresh")
    recover_lost_sessions(lease_seconds=30, max_attempts=2)
    assert list(WorkerRecord.objects.values_list("id", flat=True)) == ["fresh"]


def csrf_client() -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    token = client.get("/").cookies["csrftoken"].value
    return client, token


def test_cancel_of_a_pending_session_is_immediate(make_session):
    session = make_session()
    client, token = csrf_client()
    assert client.post(f"/api/sessions/{session.pk}/cancel").status_code == 403  # no token

    response = client.post(f"/api/sessions/{session.pk}/cancel", headers={"X-CSRFToken": token})

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    session.refresh_from_db()
    assert session.status == Status.CANCELLED and session.finished_at
    assert claim_next("worker") is None  # never runs


def test_cancel_of_a_running_session_asks_its_worker(make_session):
    session = make_session(steps=4)
    job = claim_next("worker")
    client, token = csrf_client()

    response = client.post(f"/api/sessions/{session.pk}/cancel", headers={"X-CSRFToken": token})

    assert response.status_code == 202
    assert response.json() == {
        "session_id": str(session.pk),
        "status": "running",
        "cancel_requested": True,
    }
    assert job.record_step(1, 4) is False  # the step hook stops the pipeline
    assert job.finish_cancelled() is True
    session.refresh_from_db()
    assert session.status == Status.CANCELLED


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_cancel_of_a_finished_session_answers_409_and_changes_nothing(make_session, status):
    session = make_session()
    GenerationSession.objects.filter(pk=session.pk).update(status=status, error="kept")
    before = GenerationSession.objects.values().get(pk=session.pk)
    client, token = csrf_client()

    response = client.post(f"/api/sessions/{session.pk}/cancel", headers={"X-CSRFToken": token})

    assert response.status_code == 409
    assert response.json()["errors"]["__all__"]
    assert GenerationSession.objects.values().get(pk=session.pk) == before


def test_cancel_of_an_unknown_session_is_404():
    import uuid

    assert session_cancel(uuid.uuid4()) == "not found"
    client, token = csrf_client()
    response = client.post(f"/api/sessions/{uuid.uuid4()}/cancel", headers={"X-CSRFToken": token})
    assert response.status_code == 404


def test_a_shutdown_release_puts_the_session_back_without_using_an_attempt(make_session):
    session = make_session()
    job = claim_next("leaving")
    assert job.begin() is True
    assert job.release() is True
    session.refresh_from_db()
    assert (session.status, session.attempts, session.worker_id) == (Status.PENDING, 0, "")
    assert job.record_step(1, 4) is False


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's writer lock")
def test_a_long_sqlite_lock_does_not_make_a_live_worker_look_dead(make_session):
    """Another writer holds SQLite past the lease: every worker's beats wait on it, so when it
    lets go the others' stale rows say nothing, and the job stays with its live worker."""
    import sqlite3
    import threading
    import time

    from generator.worker.heartbeat import Heartbeat, beat, register_worker

    lease = 0.6
    session = make_session()
    register_worker("other", {})
    claim_next("other")
    me = Heartbeat("me", {}, lease_seconds=lease, max_attempts=3)
    register_worker("me", {})

    holder = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(3 * lease, holder.execute, ["ROLLBACK"])
    release.start()
    me.beat_and_recover()  # waits on the lock, like the other worker's beat
    release.join()
    holder.close()
    assert reload(session).status == Status.RUNNING  # not taken for lost

    # The other worker beats again: it keeps its job for as long as it beats...
    deadline = time.monotonic() + 3 * lease
    while time.monotonic() < deadline:
        beat("other", {})
        me.beat_and_recover()
        time.sleep(me.interval)
    assert (reload(session).status, reload(session).worker_id) == (Status.RUNNING, "other")
    # ...and is recovered a lease after it really stops.
    outcome = None
    while outcome is None and time.monotonic() < deadline + 10 * lease:
        me.beat_and_recover()
        time.sleep(me.interval)
        outcome = reload(session).status if reload(session).worker_id != "other" else None
    assert outcome == Status.PENDING


def test_a_batch_takes_the_queued_jobs_that_differ_only_in_prompts_and_seeds(make_session):
    from generator.worker.claims import claim_companions

    first = make_session(prompt="a red circle", seed=1, width=128, height=128)
    other_prompt = make_session(prompt="a blue square", negative_prompt="red", seed=2)
    other_steps = make_session(prompt="a red circle", seed=3, steps=5)
    with_lora = make_session(prompt="a red circle <lora:demo-swap:1>", seed=4)
    from_image = make_session(prompt="a red circle", seed=5, init_image="inputs/in.png")
    other_size = make_session(prompt="a red circle", seed=6, width=64)
    later = make_session(prompt="a green triangle", seed=7)
    last = make_session(prompt="a white circle", seed=8)

    job = claim_next("w")
    assert job.session.pk == first.pk
    taken = claim_companions(job, "w", limit=2)

    assert [each.session.pk for each in taken] == [other_prompt.pk, later.pk]  # queue order
    assert all(each.token and each.session.status == Status.RUNNING for each in taken)
    assert len({job.token, *(each.token for each in taken)}) == 3  # a claim token each
    left = [other_steps, with_lora, from_image, other_size, last]
    assert all(reload(session).status == Status.PENDING for session in left)
    # A job that cannot share a call takes no companions.
    alone = claim_next("w")
    assert alone.session.pk == other_steps.pk
    assert claim_companions(claim_next("w"), "w", limit=3) == []  # the LoRA one
