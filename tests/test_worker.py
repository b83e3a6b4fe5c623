"""The worker on the demo model: real diffusers pipeline, real database."""

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone
from PIL import Image

from generator.models import GenerationSession, Status
from tests.support.processes import RecordedWrites, wait_for

# The worker's claims, progress writes and lifecycle go through the database: CI runs them
# on both engines.
pytestmark = pytest.mark.django_db(transaction=True)


def run_one_job():
    call_command("runworker", once=True, verbosity=0)


def test_worker_runs_a_session_and_writes_its_steps_off_the_loop(make_session):
    session = make_session(prompt="a red fox", steps=6, width=128, height=192, seed=3)

    with RecordedWrites() as writes:
        run_one_job()

    session.refresh_from_db()
    assert session.status == Status.COMPLETED, session.error
    assert (session.current_step, session.total_steps) == (6, 6)
    assert session.started_at <= session.finished_at
    # Each step as the writer thread takes it: in order, the last one always.
    steps = [step for step, _ in writes.steps]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert writes.phases[-3:] == ["denoising", "decoding", "saving"]
    with Image.open(session.image.path) as image:
        assert image.format == "PNG"
        assert image.size == (128, 192)


def test_worker_takes_the_oldest_pending_session_first(make_session):
    first = make_session(prompt="first", steps=1)
    second = make_session(prompt="second", steps=1)

    run_one_job()

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Status.COMPLETED, Status.PENDING)


def test_a_pipeline_error_fails_the_session_with_its_message(make_session):
    # Sizes that are not multiples of 8 never pass the API; written straight to
    # the database they make the real pipeline raise in its input checks.
    session = make_session(steps=2)
    GenerationSession.objects.filter(pk=session.pk).update(width=100)

    run_one_job()

    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert "divisible by 8" in session.error
    assert session.error.startswith("ValueError")
    assert session.finished_at is not None


def test_the_worker_process_survives_a_broken_model_and_serves_the_next_job(
    bad_then_good, tmp_path
):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    bad, good, worker = bad_then_good(bad={"model": str(broken), "steps": 2}, good={"steps": 2})

    assert bad.status == Status.FAILED and bad.error
    assert good.status == Status.COMPLETED, good.error
    assert worker.popen.poll() is None  # still serving


def test_the_worker_stops_cleanly_on_sigterm(start_worker):
    worker = start_worker()
    wait_for(lambda: "ready" in worker.log(), timeout=60, message="the worker to start")
    assert worker.stop() == 0


def test_a_missing_model_folder_gives_its_real_reason(make_session):
    session = make_session(steps=2, model="/srv/models/not-here")
    run_one_job()
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert "does not exist" in session.error and "huggingface" not in session.error


def test_a_preview_that_cannot_be_written_does_not_stop_the_job(make_session, monkeypatch):
    # A full disk cannot be made here: the storage refuses the preview as one would.
    from django.core.files.storage import default_storage

    real_save = default_storage.save

    def save(name, content, *args, **kwargs):
        if name.startswith("previews/"):
            raise OSError(28, "No space left on device")
        return real_save(name, content, *args, **kwargs)

    monkeypatch.setattr(default_storage, "save", save)
    monkeypatch.setattr(settings, "SD_PREVIEW_INTERVAL", 0)
    session = make_session(steps=3, width=64, height=64)
    run_one_job()
    session.refresh_from_db()
    assert session.status == Status.COMPLETED, session.error
    assert not session.preview


def test_the_writer_coalesces_what_the_database_cannot_keep_up_with(make_session):
    import sqlite3

    from django.db import connection

    from generator.worker.claims import claim_next
    from generator.worker.step_reporter import ProgressWriter, StepReporter

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's writer lock holds the writer up")
    session = make_session(steps=10)
    job = claim_next("w")
    writer = ProgressWriter(job)
    writer.start()
    reporter = StepReporter(job, previews=False, writer=writer)
    holder = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")  # the database is slow: another writer holds it
    try:
        assert reporter(1, 10) is True
        wait_for(lambda: writer.writing, timeout=10, message="the writer on step 1")
        # The denoising loop goes on meanwhile: each call returns without waiting.
        assert all(reporter(step, 10) for step in range(2, 11))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.close()
    assert writer.written == [1, 10]  # the steps between were coalesced; the last is written
    session.refresh_from_db()
    assert (session.current_step, session.phase) == (10, "decoding")


def test_the_writer_spaces_step_writes_but_never_holds_back_a_phase_or_the_last_step(
    make_session,
):
    """Steps closer than the writer's interval wait and are replaced by newer ones; a
    phase, the last step and an abandon do not wait. The interval here is a minute, so
    it never runs out during the test: whatever is written came without it."""
    from generator.worker.claims import claim_next
    from generator.worker.step_reporter import ProgressWriter, StepReporter

    session = make_session(steps=10)
    job = claim_next("w")
    writer = ProgressWriter(job, interval=60)
    writer.start()
    reporter = StepReporter(job, previews=False, writer=writer)
    assert reporter(1, 10)
    wait_for(lambda: writer.written == [1], timeout=10, message="the first step, at once")
    assert all(reporter(step, 10) for step in range(2, 6))
    wait_for(lambda: writer.resting, timeout=10, message="the writer waiting out its interval")
    assert writer.written == [1] and len(writer.pending) == 1  # steps 2-5: the newest only
    writer.submit_call(job.record_phase, "denoising")  # cannot wait: step 5 goes first
    wait_for(lambda: not writer.pending and not writer.writing, timeout=10, message="the phase")
    assert writer.written == [1, 5]
    assert all(reporter(step, 10) for step in range(6, 11))  # 10 is the last: it cannot wait
    wait_for(lambda: writer.written == [1, 5, 10], timeout=10, message="the last step")
    session.refresh_from_db()
    assert (session.current_step, session.phase) == (10, "decoding")
    writer.close()

    make_session(steps=10)
    other = ProgressWriter(claim_next("w"), interval=60)
    other.start()
    step = {"step_seconds": [], "eta_seconds": None, "recorded_at": None}
    other.submit(1, 10, **step)
    wait_for(lambda: other.written == [1], timeout=10, message="step 1")
    other.submit(2, 10, **step)
    wait_for(lambda: other.resting, timeout=10, message="step 2 waiting")
    other.abandon()  # the job is settled: nobody waits for step 2
    other.join(timeout=10)
    assert not other.is_alive() and other.written == [1]


def test_a_lost_claim_stops_the_writer_and_the_pipeline(make_session):
    from generator.models import WorkerRecord
    from generator.worker.claims import claim_next, recover_lost_sessions
    from generator.worker.step_reporter import ProgressWriter, StepReporter

    session = make_session(steps=10)
    job = claim_next("gone")
    writer = ProgressWriter(job)
    writer.start()
    reporter = StepReporter(job, previews=False, writer=writer)
    assert reporter(1, 10) and writer.flush()
    recover_lost_sessions(lease_seconds=30, max_attempts=3)  # "gone" has no heartbeat row
    WorkerRecord.objects.create(id="heir", host="h", pid=1, last_seen_at=timezone.now())
    heir = claim_next("heir")
    reporter(2, 10)
    assert writer.flush() is False  # the write found the claim gone
    assert reporter(3, 10) is False  # and the next step stops the pipeline
    writer.close()
    assert writer.written == [1, 2]  # nothing after the loss
    session.refresh_from_db()
    assert (session.worker_id, session.claim_token, session.current_step) == ("heir", heir.token, 0)
