"""What a new user meets in the first hour, server side: ids, errors, the queue, the worker's state.

The page's side of the same items is in test_browser.py.
"""

import itertools
import uuid

import pytest
from django.test import Client
from django.utils import timezone

from generator.models import WORKER_LOST, GenerationSession, Status, WorkerRecord
from generator.web.snapshots import Snapshot, read_snapshots
from generator.web.sse import Position, render
from generator.worker.claims import claim_next, recover_lost_sessions
from generator.worker.heartbeat import register_worker

pytestmark = pytest.mark.django_db


def snapshot(status=Status.RUNNING, phase="", step=0, total=12, **fields) -> Snapshot:
    defaults = dict(step_recorded_at=None, image_url=None, error="")
    return Snapshot(
        status=status, phase=phase, current_step=step, total_steps=total, **defaults | fields
    )


COLD_START = [
    snapshot(Status.PENDING, queue_position=2),
    snapshot(Status.PENDING, queue_position=1),
    snapshot(phase="starting"),
    snapshot(phase="loading model"),
    snapshot(phase="building demo model"),
    snapshot(phase="denoising", step=1, preview="data:a", preview_step=1),
    snapshot(phase="denoising", step=2, preview="data:a", preview_step=1),
    snapshot(phase="denoising", step=3, preview="data:b", preview_step=3),
    # The worker is lost; the job goes back to the queue and starts again.
    snapshot(phase="denoising", step=3, preview="data:b", preview_step=3, worker_lost=True),
    snapshot(Status.PENDING, queue_position=1, restarts=1, restart_reason=WORKER_LOST),
    snapshot(phase="starting", restarts=1),
    snapshot(phase="denoising", step=1, restarts=1),
    snapshot(phase="decoding", step=12, restarts=1),
    snapshot(Status.COMPLETED, step=12, restarts=1, image_url="/media/x.png"),
]


def stream_of(snapshots, position=None):
    """(event id, message type) for each message a stream sends along `snapshots`."""
    import json

    position = position or Position(run=snapshots[0].restarts)
    position = position.after({"type": "connected"})
    sent = [(position.event_id, "connected")]
    previous = None
    for current in snapshots:
        text, position = render(previous, current, position)
        for block in text.decode().split("\n\n")[:-1]:
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            sent.append((int(lines["id"]), json.loads(lines["data"])["type"]))
        previous = current
    return sent


def test_event_ids_only_grow_across_a_cold_start_a_lost_worker_and_a_restart():
    sent = stream_of(COLD_START)
    ids = [event_id for event_id, _ in sent]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), sent
    types = [kind for _, kind in sent]
    assert types.count("restarted") == 1 and "stalled" in types
    assert types[-1] == "complete"


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_event_ids_only_grow_in_any_order_of_messages_before_the_first_step(order):
    kinds = [
        snapshot(Status.PENDING, queue_position=3),
        snapshot(phase="starting"),
        snapshot(phase="loading model"),
        snapshot(phase="loading model", preview="data:p", preview_step=0),
    ]
    sent = stream_of([kinds[i] for i in order] + [snapshot(phase="denoising", step=1)])
    ids = [event_id for event_id, _ in sent]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), sent


def test_a_resume_from_any_id_of_a_stream_repeats_no_step_and_keeps_ids_growing():
    sent = stream_of(COLD_START)
    for event_id, _ in sent[:-1]:
        position = Position.from_event_id(str(event_id))
        assert position.event_id == event_id
        text, after = render(None, COLD_START[-1], position)
        assert after.event_id > event_id
        assert b'"type":"complete"' in text


def test_a_session_whose_worker_stopped_answering_says_so_and_has_no_eta(make_session, settings):
    settings.SD_WORKER_LEASE = 30
    session = make_session(steps=12)
    register_worker("w-dead", {})
    claim_next("w-dead")
    GenerationSession.objects.filter(pk=session.pk).update(current_step=3, eta_seconds=19.0)

    alive = Client().get(f"/api/sessions/{session.pk}").json()
    assert (alive["waiting_for"], alive["eta_seconds"]) == (None, 19.0)
    assert read_snapshots([session.pk])[session.pk].worker_lost is False

    past_lease = timezone.now() - timezone.timedelta(seconds=31)
    WorkerRecord.objects.filter(pk="w-dead").update(last_seen_at=past_lease)
    lost = Client().get(f"/api/sessions/{session.pk}").json()
    assert lost["status"] == "running"
    assert "stopped answering" in lost["waiting_for"]
    assert lost["eta_seconds"] is None
    snap = read_snapshots([session.pk])[session.pk]
    assert snap.worker_lost and snap.eta_seconds is None

    recover_lost_sessions(lease_seconds=30, max_attempts=2)
    session.refresh_from_db()
    assert (session.status, session.restarts, session.restart_reason) == (
        Status.PENDING,
        1,
        WORKER_LOST,
    )


def test_a_starting_worker_is_told_apart_from_none(make_session):
    session = make_session()
    client = Client()
    none = client.get(f"/api/sessions/{session.pk}").json()["waiting_for"]
    assert none == "No worker is running: start one with `.venv/bin/python manage.py runworker`."

    register_worker("w-starting", {}, ready=False)
    starting = client.get(f"/api/sessions/{session.pk}").json()["waiting_for"]
    assert starting.startswith("A worker is starting")

    register_worker("w-starting", {}, ready=True)
    assert client.get(f"/api/sessions/{session.pk}").json()["waiting_for"] is None


def test_a_just_started_job_counts_in_the_eta_of_the_jobs_behind_it(make_session):
    register_worker("w1", {})
    running = make_session(steps=10)
    GenerationSession.objects.filter(pk=running.pk).update(expected_seconds=20.0)
    queued = make_session(steps=10)
    GenerationSession.objects.filter(pk=queued.pk).update(expected_seconds=20.0)
    claim_next("w1")  # started: no step timed yet, so no eta_seconds of its own

    eta = read_snapshots([queued.pk])[queued.pk].eta_seconds
    assert eta == pytest.approx(40.0)  # the running job's 20 s, then its own 20 s


def test_api_errors_are_json_with_a_message():
    client = Client(enforce_csrf_checks=True)
    for url in (f"/api/sessions/{uuid.uuid4()}", f"/api/progress/{uuid.uuid4()}", "/api/nope"):
        response = client.get(url)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json()["message"]

    csrf = client.post("/api/generate", {"prompt": "x"})
    assert csrf.status_code == 403 and csrf["Content-Type"] == "application/json"
    assert "X-CSRFToken" in csrf.json()["message"]

    wrong_method = client.get("/api/generate")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["message"] == "Method not allowed: use POST."

    # Pages keep Django's own HTML.
    assert client.get(f"/s/{uuid.uuid4()}")["Content-Type"].startswith("text/html")


def test_the_queue_lists_ones_own_waiting_and_running_jobs_oldest_first():
    alice, bob = Client(), Client()
    ids = [
        alice.post("/api/generate", {"prompt": f"job {n}", "steps": 4}).json()["session_id"]
        for n in range(3)
    ]
    bob.post("/api/generate", {"prompt": "bob's"})
    register_worker("w1", {})
    claim_next("w1")  # alice's first job runs

    queue = alice.get("/api/queue").json()["sessions"]
    assert [job["session_id"] for job in queue] == ids
    assert [job["status"] for job in queue] == ["running", "pending", "pending"]
    assert [job["queue_position"] for job in queue] == [None, 1, 2]
    assert queue[0]["url"] == f"/s/{ids[0]}"
    assert [job["prompt"] for job in bob.get("/api/queue").json()["sessions"]] == ["bob's"]


def test_the_favicon_is_served():
    client = Client()
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert b"<svg" in b"".join(response.streaming_content)
