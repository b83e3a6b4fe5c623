"""`make run`'s supervisor (honcho through sdsite.procfile), as a real process tree."""

import signal
import subprocess
import sys

import pytest

from generator.models import GenerationSession, Status
from tests.support.processes import ROOT, process_env, wait_for

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]


def test_ctrl_c_gives_the_worker_its_grace_instead_of_killing_it_after_5_s(tmp_path, make_session):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"worker: {sys.executable} manage.py runworker --poll-interval 0.05\n")
    # Longer than honcho's own 5 s before SIGKILL, well within the grace.
    session = make_session(steps=60, width=256, height=256)
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "sdsite.procfile", "start", "-f", str(procfile)],
            cwd=ROOT,
            env=process_env(SD_WORKER_GRACE="600"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: GenerationSession.objects.get(pk=session.pk).current_step >= 2,
            timeout=120,
            message="the job to start",
        )
        supervisor.send_signal(signal.SIGINT)  # what Ctrl-C sends to `make run`
        supervisor.wait(timeout=250)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    session.refresh_from_db()
    assert session.status == Status.COMPLETED, log_path.read_text()
    assert "SIGKILL" not in log_path.read_text()
