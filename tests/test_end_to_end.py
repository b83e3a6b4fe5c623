"""The whole slice with real processes: uvicorn, runworker, an HTTP client reading SSE."""

import io

import httpx
import pytest
from PIL import Image

from tests.sse_client import iter_events
from tests.step_gate import StepGate, gated_worker_env

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
    gate = StepGate(tmp_path / "gate")
    with httpx.Client(base_url=web_server.url, timeout=120) as client:
        token = client.get("/").cookies["csrftoken"]
        queued = client.post(
            "/api/generate",
            json={"prompt": "a lighthouse", "steps": 6, "width": 64, "height": 64},
            headers={"X-CSRFToken": token, "Referer": web_server.url + "/"},
        )
        assert queued.status_code == 202, queued.text
        messages = []
        with client.stream("GET", queued.json()["progress_url"]) as stream:
            for event in iter_events(stream.iter_lines()):
                if not event.data:
                    continue
                messages.append(event.data)
                gate.saw(event.data)
                if event.data["type"] == "queued":  # the stream is open: now the worker
                    worker = start_worker(**gated_worker_env(gate.file, SD_STEP_WRITE_INTERVAL=0))

    kinds = [
        f"{m['type']} {m.get('current_step', m.get('phase', ''))}".strip()
        for m in messages
        if m["type"] != "preview"
    ]
    steps = [m["current_step"] for m in messages if m["type"] == "progress"]
    assert steps == list(range(7))  # 0 when the worker took it, then each step once
    assert all(m["total_steps"] == 6 for m in messages if m["type"] == "progress")
    phases = [m["phase"] for m in messages if m["type"] == "phase"]
    assert phases == ["loading model", "denoising", "decoding", "saving"]
    # Each phase where it belongs among the steps: denoising comes with step 1, decoding
    # with the last, saving after it, then the end.
    assert kinds[kinds.index("progress 1") - 1] == "phase denoising"
    assert kinds[-5:] == ["progress 5", "phase decoding", "progress 6", "phase saving", "complete"]
    assert kinds.index("phase loading model") < kinds.index("progress 1")
    assert "step gate" not in worker.log()  # it never went on unseen
