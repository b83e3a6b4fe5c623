"""manage.py generate, end to end on the real database and pipeline."""

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from generator.models import GenerationSession, Status
from tests.processes import ROOT, process_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


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
