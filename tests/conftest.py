import pytest

from tests.processes import WebServer, WorkerProcess


@pytest.fixture
def web_server(tmp_path, transactional_db):
    server = WebServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def start_worker(tmp_path, transactional_db):
    """Start runworker processes; all are stopped at the end of the test."""
    workers = []

    def start(*args, **env):
        worker = WorkerProcess(tmp_path, *args, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def make_session(db):
    """Create a session through the same service the API uses."""
    from generator.services import session_create

    def make(**params):
        params.setdefault("prompt", "a lighthouse at dawn")
        params.setdefault("steps", 4)
        return session_create(**params)

    return make
