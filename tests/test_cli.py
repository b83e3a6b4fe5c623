"""manage.py generate, end to end on the real database and pipeline."""

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from generator.models import GenerationSession, Status
from tests.support.processes import ROOT, process_env, wait_for

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]


def generate(*args, **options):
    out, err = StringIO(), StringIO()
    call_command("generate", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_generate_queues_like_the_web_and_copies_each_image(start_worker, tmp_path):
    worker = start_worker()
    wait_for(lambda: "ready" in worker.log(), timeout=60, message="the worker")

    out, err = generate(
        "a fox", steps=3, width=64, height=96, seed=5, count=2, scheduler="UniPC",
        output=str(tmp_path / "fox.png"),
    )  # fmt: skip

    paths = out.split()
    assert paths == [str(tmp_path / "fox-1.png"), str(tmp_path / "fox-2.png")]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (64, 96)
    sessions = GenerationSession.objects.order_by("seed")
    assert [(s.seed, s.status, s.scheduler) for s in sessions] == [
        (5, Status.COMPLETED, "UniPC"),
        (6, Status.COMPLETED, "UniPC"),
    ]
    assert "image 2/2" in err and "3/3" in err  # the progress bars


def test_without_a_worker_it_says_so_and_queues_nothing():
    with pytest.raises(CommandError, match="No worker is running"):
        generate("a fox", steps=2)
    assert not GenerationSession.objects.exists()


def test_inline_runs_the_job_in_process():
    out, _ = generate("a fox", steps=2, width=64, height=64, inline=True)
    session = GenerationSession.objects.get()
    assert session.status == Status.COMPLETED
    assert out.strip() == session.image.path


def test_a_failed_image_makes_the_command_fail(tmp_path, settings):
    broken = tmp_path / "broken"
    broken.mkdir()
    settings.SD_MODELS = ["demo", str(broken)]
    with pytest.raises(CommandError, match="1 of 1 image"):
        generate("a fox", steps=2, model=str(broken), inline=True)
    assert GenerationSession.objects.get().status == Status.FAILED


def test_a_model_the_site_does_not_offer_is_refused():
    with pytest.raises(CommandError, match="model"):
        generate("a fox", model="someone/else", inline=True)
    assert not GenerationSession.objects.exists()


def test_invalid_parameters_exit_non_zero_with_the_field_named():
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", "a fox", "--width", "100", "--inline"],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "width" in result.stderr and "multiple of 8" in result.stderr


def run_and_interrupt(tmp_path, answer: str, *args) -> tuple[str, str]:
    """Run `generate` in a terminal (a pty on stdin), press Ctrl-C, answer the question."""
    import os
    import pty
    import signal

    parent, child = pty.openpty()
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        command = subprocess.Popen(
            [sys.executable, "manage.py", "generate", *args],
            cwd=ROOT,
            env=process_env(),
            stdin=child,
            stdout=out,
            stderr=err,
            # A suite started in the background (`cmd &`) ignores SIGINT, and
            # children inherit that: give Ctrl-C back to the command.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(lambda: GenerationSession.objects.count() == 2, timeout=60, message="queueing")
        wait_for(lambda: "image 1/2" in err_path.read_text(), timeout=30, message="the bars")
        command.send_signal(signal.SIGINT)
        wait_for(lambda: "[Y/n]" in out_path.read_text(), timeout=30, message="the question")
        os.write(parent, answer.encode() + b"\n")
        command.wait(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
        os.close(parent)
        os.close(child)
    return out_path.read_text(), err_path.read_text()


def test_ctrl_c_then_no_leaves_the_jobs_queued_and_prints_where_to_follow_them(
    tmp_path, start_worker
):
    # A live worker that serves another model: the jobs wait in the queue.
    worker = start_worker("--model", "some-other-model")
    wait_for(lambda: "ready" in worker.log(), timeout=60, message="the worker")

    out, err = run_and_interrupt(tmp_path, "n", "a fox", "--count", "2", "--steps", "2")

    sessions = GenerationSession.objects.order_by("created_at")
    assert [s.status for s in sessions] == [Status.PENDING, Status.PENDING]
    for session in sessions:
        assert f"{session.pk} http://127.0.0.1:8000/s/{session.pk}" in out
    assert "Left in the queue" in err


def test_ctrl_c_then_a_blank_answer_takes_the_default_and_cancels(tmp_path, start_worker):
    worker = start_worker("--model", "some-other-model")
    wait_for(lambda: "ready" in worker.log(), timeout=60, message="the worker")

    _, err = run_and_interrupt(tmp_path, "", "a fox", "--count", "2", "--steps", "2")

    assert set(GenerationSession.objects.values_list("status", flat=True)) == {Status.CANCELLED}
    assert "Cancelled." in err


def test_the_terminal_shows_the_bars_and_the_result_not_the_worker_s_log(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", "a fox", "--steps", "2", "--width", "64",
         "--height", "64", "--inline"],
        cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    session = GenerationSession.objects.get()
    assert result.stdout.strip() == session.image.path
    assert "2/2" in result.stderr  # the bar
    for noise in ("INFO", "Worker ", "Multiple distributions"):
        assert noise not in result.stderr
    assert "Log: " in result.stderr
