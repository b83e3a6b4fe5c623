"""Live previews: the latents as a small JPEG, written by the worker and sent over the stream."""

import base64
import io
import itertools
import time

import httpx
import pytest
import torch
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test import Client, override_settings
from PIL import Image

from generator.models import GenerationSession, Status
from generator.pipelines.previews import latents_to_image
from generator.web.snapshots import preview_link
from generator.worker.claims import claim_next
from generator.worker.step_reporter import ProgressWriter, StepReporter
from tests.sse_client import iter_events

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]


def test_latents_become_a_small_rgb_picture():
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    image = latents_to_image(latents)

    assert image.mode == "RGB"
    assert image.size == (128, 128)  # 4x the latent size
    assert latents_to_image(latents).tobytes() == image.tobytes()
    assert latents_to_image(latents * -1).tobytes() != image.tobytes()


def test_an_unknown_latent_space_still_gives_a_picture():
    latents = torch.randn(1, 16, 64, 96)  # e.g. SD3 / Flux: 16 channels
    image = latents_to_image(latents)
    assert (image.mode, image.size) == ("RGB", (256, 171))  # longest side capped at 256


def test_previews_are_time_throttled_and_kept_with_the_session(make_session):
    session = make_session(steps=20)
    job = claim_next("test-worker")
    ticks = itertools.count()  # each step takes 1 s on this clock
    reporter = StepReporter(job, preview_interval=5, clock=lambda: next(ticks))
    reporter.start()
    latents = torch.randn(1, 4, 32, 32)
    previews = []
    for step in range(1, 21):
        assert reporter(step, 20, latents + step)
        session.refresh_from_db()
        previews.append(session.preview_step)

    # At 1 s a step and at most one preview each 5 s: steps 1, 6, 11, 16.
    assert sorted(set(previews)) == [1, 6, 11, 16]
    assert session.step_seconds == [1] * 20
    assert session.eta_seconds == 0  # no steps left, no decode history yet
    # Only the newest preview is kept; each replaced one is deleted.
    _, files = default_storage.listdir("previews")
    assert [f for f in files if f.startswith(str(session.pk))] == [f"{session.pk}-16.jpg"]
    with default_storage.open(session.preview.name) as file, Image.open(file) as image:
        assert (image.format, image.size) == ("JPEG", (128, 128))


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_the_worker_makes_previews_on_both_backends(make_session, backend):
    session = make_session(steps=6, width=128, height=128, backend=backend)
    with override_settings(SD_PREVIEW_INTERVAL=0):  # one each step
        call_command("runworker", once=True, verbosity=0)

    session.refresh_from_db()
    assert session.status == Status.COMPLETED, session.error
    assert session.preview_step == 6
    with default_storage.open(session.preview.name) as file, Image.open(file) as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))
    assert len(session.step_seconds) == 6 and all(s > 0 for s in session.step_seconds)


def test_sd_previews_0_turns_them_off(make_session):
    session = make_session(steps=4, width=64, height=64)
    with override_settings(SD_PREVIEWS=False, SD_PREVIEW_INTERVAL=0):
        call_command("runworker", once=True, verbosity=0)
    session.refresh_from_db()
    assert session.status == Status.COMPLETED
    assert (session.preview.name, session.preview_step) == ("", 0)


def test_the_stream_sends_previews_as_data_urls_before_the_image(
    web_server, start_worker, make_session
):
    session = make_session(steps=10, width=128, height=128)
    start_worker(SD_PREVIEW_INTERVAL="0.2")
    url = f"{web_server.url}/api/progress/{session.pk}"
    with httpx.Client(timeout=120) as client, client.stream("GET", url) as response:
        messages = [e.data for e in iter_events(response.iter_lines()) if e.data]

    types = [m["type"] for m in messages]
    previews = [m for m in messages if m["type"] == "preview"]
    assert types[-1] == "complete"
    assert previews, types
    assert types.index("preview") < types.index("complete")
    steps = [p["step"] for p in previews]
    assert steps == sorted(set(steps)) and all(1 <= s <= 10 for s in steps)
    prefix = "data:image/jpeg;base64,"
    assert all(p["image"].startswith(prefix) for p in previews)
    data = base64.b64decode(previews[-1]["image"][len(prefix) :])
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))


def test_deleting_a_session_deletes_its_files(make_session):
    session = make_session(steps=2, width=64, height=64)
    with override_settings(SD_PREVIEW_INTERVAL=0):
        call_command("runworker", once=True, verbosity=0)
    session.refresh_from_db()
    names = [session.image.name, session.preview.name]
    assert all(default_storage.exists(name) for name in names)

    GenerationSession.objects.filter(pk=session.pk).delete()

    assert not any(default_storage.exists(name) for name in names)


def test_a_preview_url_outlives_the_preview_it_was_read_for():
    """Each preview replaces (deletes) the one before: the page's history, the batch tiles
    and other tools fetch the URL after reading it, often after the next preview."""
    alice, bob = Client(), Client()
    response = alice.post("/api/generate", {"prompt": "a red circle", "steps": 20})
    session_id = response.json()["session_id"]
    address = f"/s/{session_id}/preview.jpg"
    assert alice.get(address).status_code == 404  # queued: no preview yet
    job = claim_next("test-worker")
    reporter = StepReporter(job, preview_interval=0)
    reporter.start()
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    assert reporter(1, 20, latents)
    url = alice.get(f"/api/sessions/{session_id}").json()["preview_url"]
    first = GenerationSession.objects.get(pk=session_id).preview.name
    assert reporter(2, 20, -latents)  # a different picture, in a file of its own
    session = GenerationSession.objects.get(pk=session_id)

    assert url == f"{address}?step=1"
    assert not default_storage.exists(first)  # the file that URL was read for is gone
    response = alice.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    with default_storage.open(session.preview.name) as file:
        assert response.content == file.read()  # the newest preview, step 2's
    assert session.thumbnail_url == f"{address}?step=2"  # /history's picture while it runs
    assert bob.get(url).status_code == 404  # someone else's session


def test_with_sd_preview_delivery_url_the_stream_names_the_preview_instead_of_carrying_it(
    make_session,
):
    session = make_session(steps=20)
    reporter = StepReporter(claim_next("test-worker"), preview_interval=0)
    reporter.start()
    assert reporter(1, 20, torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)))
    session.refresh_from_db()

    assert preview_link(session).startswith("data:image/jpeg;base64,")  # inline, the default
    with override_settings(SD_PREVIEW_DELIVERY="url"):
        assert preview_link(session) == f"/s/{session.pk}/preview.jpg?step=1"


def test_step_times_are_written_at_most_every_interval_and_all_of_them_with_the_last_step(
    make_session,
):
    session = make_session(steps=3)
    writer = ProgressWriter(claim_next("test-worker"), times_interval=3600)
    writer.start()
    written = []
    for step in (1, 2, 3):
        times = [0.1 * n for n in range(1, step + 1)]
        writer.submit(step, 3, step_seconds=times, eta_seconds=0.0, recorded_at=time.time())
        assert writer.flush()
        session.refresh_from_db()
        written.append((session.current_step, session.step_seconds))
    writer.close()

    # The first write carries them; the next within the hour does not; the last step does.
    assert written == [(1, [0.1]), (2, [0.1]), (3, [0.1, 0.2, 0.30000000000000004])]
