import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.processes import WebServer, WorkerProcess


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


def tell_logs_if_failed(request, processes) -> None:
    """A failed test shows the end of its servers' and workers' logs."""
    if getattr(request.node, "call_failed", False):
        for process in processes:
            sys.stdout.write(f"--- {process.log_path.name} (end)\n{process.log()[-3000:]}\n")


@pytest.fixture(autouse=True)
def no_global_options_left():
    """A1111's options set with API auth off (the checkpoint, the VAE) are kept for every
    process in $DATA_DIR/options.json, which the whole run shares: no test leaves them to
    the next."""
    yield
    (Path(settings.DATA_DIR) / "options.json").unlink(missing_ok=True)


@pytest.fixture
def web_server(request, tmp_path, transactional_db):
    server = WebServer(tmp_path)
    yield server
    server.stop()
    tell_logs_if_failed(request, [server])


@pytest.fixture
def start_worker(request, tmp_path, transactional_db):
    """Start runworker processes; all are stopped at the end of the test."""
    workers = []

    def start(*args, **env):
        worker = WorkerProcess(tmp_path, *args, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    tell_logs_if_failed(request, workers)


@pytest.fixture
def make_session(db):
    """Create a session through the same service the API uses."""
    from generator.services import session_create

    def make(**params):
        params.setdefault("prompt", "a lighthouse at dawn")
        params.setdefault("steps", 4)
        return session_create(**params)

    return make


@pytest.fixture
def bad_then_good(make_session, start_worker):
    """Queue a session that must fail and one that must succeed; run a worker process on both.

    Returns (bad, good, worker) once neither is pending or running.
    """
    from generator.models import GenerationSession
    from tests.support.processes import wait_for

    def run(*, bad: dict, good: dict, timeout: float = 180):
        sessions = make_session(**bad), make_session(**good)
        worker = start_worker()
        unfinished = GenerationSession.objects.filter(status__in=["pending", "running"])
        wait_for(lambda: not unfinished.exists(), timeout=timeout, message="both to finish")
        for session in sessions:
            session.refresh_from_db()
        return (*sessions, worker)

    return run
