"""The progress stream, over real HTTP from a uvicorn server, against a row the test advances."""

import time
import uuid

import httpx
import pytest

from generator.models import GenerationSession, Status
from tests.sse_client import iter_events
from tests.support.processes import WebServer

pytestmark = pytest.mark.django_db(transaction=True)


def advance(session, **fields):
    GenerationSession.objects.filter(pk=session.pk).update(**fields)


def open_stream(client, server, session):
    return client.stream("GET", f"{server.url}/api/progress/{session.pk}", timeout=20)


def test_stream_sends_each_change_in_order_then_ends(web_server, make_session):
    session = make_session(steps=3)
    with httpx.Client() as client, open_stream(client, web_server, session) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = iter_events(response.iter_lines())

        first = next(events)
        assert first.data == {"type": "connected", "session_id": str(session.pk)}
        assert first.retry is not None
        # No worker is running, so there is no estimate.
        assert next(events).data == {"type": "queued", "position": 1, "eta_seconds": None}

        advance(session, status=Status.RUNNING, phase="denoising")
        assert next(events).data == {"type": "phase", "phase": "denoising"}
        assert next(events).data == {
            "type": "progress",
            "current_step": 0,
            "total_steps": 3,
            "percentage": 0,
        }
        received = []
        for step in (1, 2, 3):
            at = time.time()
            advance(session, current_step=step, step_recorded_at=at)
            event = next(events)
            received.append(event)
            assert event.data == {
                "type": "progress",
                "current_step": step,
                "total_steps": 3,
                "percentage": step * 100 // 3,
                "at": at,
            }
        advance(session, status=Status.COMPLETED, image="images/x.png", phase="")
        last = next(events)
        assert last.data == {"type": "complete", "image_url": "/media/images/x.png"}
        assert list(events) == []  # the server ended the stream

    ids = [int(e.id) for e in [first, *received, last]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Under uvicorn the hub wrote the steps itself (connections.BodyWriter); the last
    # message went through the stream's task, which ended the response.
    stats = httpx.get(f"{web_server.url}/api/stats/progress").json()
    assert stats["written"] >= 3 and stats["queued"] >= 1


def test_a_finished_session_gets_connected_and_the_final_message_at_once(web_server, make_session):
    session = make_session(steps=5)
    advance(session, status=Status.COMPLETED, current_step=5, image="images/done.png")
    with httpx.Client() as client, open_stream(client, web_server, session) as response:
        messages = [e.data for e in iter_events(response.iter_lines()) if e.data]
    assert messages == [
        {"type": "connected", "session_id": str(session.pk)},
        {"type": "progress", "current_step": 5, "total_steps": 5, "percentage": 100},
        {"type": "complete", "image_url": "/media/images/done.png"},
    ]


def test_a_failure_is_sent_as_an_error_message(web_server, make_session):
    session = make_session(steps=5)
    with httpx.Client() as client, open_stream(client, web_server, session) as response:
        events = iter_events(response.iter_lines())
        assert next(events).data["type"] == "connected"
        assert next(events).data["type"] == "queued"
        advance(session, status=Status.FAILED, error="RuntimeError: out of memory")
        assert next(events).data == {"type": "error", "message": "RuntimeError: out of memory"}
        assert list(events) == []


def test_a_cancelled_session_ends_the_stream(web_server, make_session):
    session = make_session(steps=5)
    with httpx.Client() as client, open_stream(client, web_server, session) as response:
        events = iter_events(response.iter_lines())
        assert [next(events).data["type"] for _ in range(2)] == ["connected", "queued"]
        advance(session, status=Status.CANCELLED)
        assert next(events).data == {"type": "cancelled"}
        assert list(events) == []


def test_unchanged_rows_send_nothing_but_keepalives(tmp_path, make_session):
    server = WebServer(tmp_path, SD_KEEPALIVE_SECONDS="0.3")
    try:
        session = make_session(steps=5)
        with httpx.Client() as client, open_stream(client, server, session) as response:
            events = iter_events(response.iter_lines())
            assert next(events).data["type"] == "connected"
            assert next(events).data["type"] == "queued"
            idle = [next(events) for _ in range(3)]
            assert [e.comment for e in idle] == ["keepalive"] * 3
            advance(session, status=Status.CANCELLED)
            rest = [e for e in events if e.data]
            assert [e.data for e in rest] == [{"type": "cancelled"}]
    finally:
        server.stop()


def test_unknown_session_gets_404(web_server):
    response = httpx.get(f"{web_server.url}/api/progress/{uuid.uuid4()}")
    assert response.status_code == 404


def test_the_stream_checks_the_host_and_carries_the_security_headers(web_server, make_session):
    session = make_session(steps=3)
    advance(session, status=Status.CANCELLED)
    url = f"{web_server.url}/api/progress/{session.pk}"
    refused = httpx.get(url, headers={"Host": "evil.example"})
    assert refused.status_code == 400 and refused.json()["message"] == "Unknown host."
    served = httpx.get(url)
    assert served.status_code == 200
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["x-frame-options"] == "DENY"
