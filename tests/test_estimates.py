"""Queue positions and ETAs, from the step times workers record (real worker, real database)."""

import itertools

import httpx
import pytest
from django.core.management import call_command

from generator.estimates import measured_timing
from generator.services import session_cancel
from generator.web.snapshots import read_snapshots
from generator.worker.claims import claim_next
from generator.worker.heartbeat import register_worker
from generator.worker.step_reporter import StepReporter
from tests.sse_client import iter_events

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"steps": 4, "width": 64, "height": 64}


def run_one_job():
    call_command("runworker", once=True, verbosity=0)


def test_no_history_means_no_estimate(make_session):
    register_worker("w1", {})
    session = make_session(**SMALL)
    assert session.expected_seconds is None
    snapshot = read_snapshots([session.pk])[session.pk]
    assert (snapshot.queue_position, snapshot.eta_seconds) == (1, None)


def test_a_finished_job_teaches_the_estimate_for_its_model_backend_and_size(make_session):
    make_session(**SMALL)
    run_one_job()

    timing = measured_timing("demo", "pytorch", 64, 64)
    assert timing.seconds_per_step > 0 and timing.seconds_after_steps > 0
    same = make_session(**SMALL | {"steps": 8})
    assert same.expected_seconds == pytest.approx(timing.job_seconds(8), abs=0.1)
    assert make_session(**SMALL | {"width": 128}).expected_seconds is None
    assert make_session(**SMALL | {"backend": "openvino"}).expected_seconds is None


def test_queued_sessions_know_their_position_and_eta(make_session):
    make_session(**SMALL)
    run_one_job()  # history for the estimate
    queued = [make_session(**SMALL) for _ in range(3)]
    ids = [s.pk for s in queued]

    without_workers = read_snapshots(ids)
    assert [without_workers[pk].queue_position for pk in ids] == [1, 2, 3]
    assert [without_workers[pk].eta_seconds for pk in ids] == [None] * 3  # nobody to run them

    register_worker("w1", {})
    snapshots = read_snapshots(ids)
    etas = [snapshots[pk].eta_seconds for pk in ids]
    assert etas[0] == pytest.approx(queued[0].expected_seconds, abs=0.1)
    assert etas[0] < etas[1] < etas[2]

    register_worker("w2", {})  # two workers share the work ahead
    shared = read_snapshots(ids)
    assert shared[ids[2]].eta_seconds < snapshots[ids[2]].eta_seconds


def test_a_running_job_estimates_its_time_left_from_its_own_steps(make_session):
    make_session(**SMALL)
    job = claim_next("test-worker")
    ticks = itertools.count()
    reporter = StepReporter(job, seconds_after_steps=2.0, previews=False, clock=lambda: next(ticks))
    reporter.start()
    etas = []
    for step in range(1, 5):
        reporter(step, 4)
        job.session.refresh_from_db()
        etas.append(job.session.eta_seconds)
    assert etas == [5.0, 4.0, 3.0, 2.0]  # 1 s a step left, then 2 s to decode and save


def test_the_stream_says_when_the_queue_position_changes(web_server, make_session):
    ahead = make_session(**SMALL)
    mine = make_session(**SMALL)
    url = f"{web_server.url}/api/progress/{mine.pk}"
    with httpx.Client(timeout=30) as client, client.stream("GET", url) as response:
        events = iter_events(response.iter_lines())
        assert next(events).data["type"] == "connected"
        assert next(events).data == {"type": "queued", "position": 2, "eta_seconds": None}
        session_cancel(ahead.pk)
        assert next(events).data == {"type": "queued", "position": 1, "eta_seconds": None}
        session_cancel(mine.pk)
        assert next(events).data == {"type": "cancelled"}


def test_progress_messages_carry_the_eta_while_running(web_server, start_worker, make_session):
    session = make_session(steps=12, width=128, height=128)
    start_worker()
    url = f"{web_server.url}/api/progress/{session.pk}"
    with httpx.Client(timeout=120) as client, client.stream("GET", url) as response:
        messages = [e.data for e in iter_events(response.iter_lines()) if e.data]
    running = [
        m for m in messages if m["type"] == "progress" and 0 < m["current_step"] < m["total_steps"]
    ]
    assert messages[-1]["type"] == "complete"
    assert running and all(m["eta_seconds"] >= 0 for m in running)
    assert running[0]["eta_seconds"] > 0
    assert running[-1]["eta_seconds"] <= running[0]["eta_seconds"]
