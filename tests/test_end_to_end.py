"""The whole slice with real processes: uvicorn, runworker, an HTTP client reading SSE."""

import io

import httpx
import pytest
from PIL import Image

from tests.sse_client import iter_events
from tests.step_gate import assert_every_step_once_with_its_phases, follow_a_gated_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_post_a_job_follow_its_progress_and_fetch_the_png(web_server, start_worker):
    start_worker()
    with httpx.Client(base_url=web_server.url, timeout=120) as client:
        page = client.get("/")
        assert page.status_code == 200
        token = client.cookies["csrftoken"]

        queued = client.post(
            "/api/generate",
            json={"prompt": "a lighthouse", "steps": 8, "width": 192, "height": 128},
            headers={"X-CSRFToken": token, "Referer": web_server.url + "/"},
        )
        assert queued.status_code == 202, queued.text
        session_id = queued.json()["session_id"]

        with client.stream("GET", queued.json()["progress_url"]) as stream:
            messages = [e.data for e in iter_events(stream.iter_lines()) if e.data]

        assert messages[0] == {"type": "connected", "session_id": session_id}
        assert messages[-1]["type"] == "complete"
        steps = [m["current_step"] for m in messages if m["type"] == "progress"]
        assert steps == sorted(steps) and steps[-1] == 8
        assert len(set(steps)) >= 2  # the bar moved while the job ran, not just at the end

        png = client.get(messages[-1]["image_url"])
        assert png.status_code == 200
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (192, 128)

        session = client.get(f"/api/sessions/{session_id}").json()
        assert (session["status"], session["percentage"]) == ("completed", 100)


def test_the_stream_shows_every_step_of_a_real_worker_once_in_order_and_its_phases(
    web_server, start_worker, tmp_path
):
    """Every step written (SD_STEP_WRITE_INTERVAL=0) reaches the stream, once, in order.

    The worker waits after each step and phase until the stream has shown it
    (tests/step_gate.py): the hub sends only the newest of the steps written between two
    of its reads, so without the gate a missing step would be the hub's choice, not a bug.
    """
    messages, worker = follow_a_gated_job(web_server, start_worker, tmp_path / "gate", steps=6)

    assert_every_step_once_with_its_phases(messages, steps=6)
    assert "step gate" not in worker.log()  # it never went on unseen
    assert messages[-1]["type"] == "complete"
