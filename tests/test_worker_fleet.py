"""Workers as real processes against the real database: crashes, fleets, signals, cancel."""

import signal
import threading

import httpx
import pytest
from django.db import connection
from django.test import Client

from generator.models import GenerationSession, Status
from generator.worker.loop import Worker
from tests.sse_client import iter_events
from tests.support.processes import WebServer, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = "1.5"  # seconds: short, so recovery happens within the test


def reload(session) -> GenerationSession:
    return GenerationSession.objects.get(pk=session.pk)


def wait_until_step(session, step: int, timeout: float = 120):
    wait_for(
        lambda: reload(session).current_step >= step,
        timeout=timeout,
        message=f"session to reach step {step}",
    )


def wait_until_status(session, *statuses, timeout: float = 120) -> GenerationSession:
    return wait_for(
        lambda: (s := reload(session)).status in statuses and s,
        timeout=timeout,
        message=f"session to become {statuses}",
    )


def kill_hard(worker):
    worker.popen.kill()  # SIGKILL: no clean-up runs
    worker.popen.wait()


def test_a_killed_worker_s_session_is_recovered_and_completed_once(make_session, start_worker):
    session = make_session(steps=40, width=128, height=128)
    first = start_worker(SD_WORKER_LEASE=LEASE)
    wait_until_step(session, 2)
    kill_hard(first)
    assert reload(session).status == Status.RUNNING  # left behind by the dead worker

    second = start_worker(SD_WORKER_LEASE=LEASE)
    done = wait_until_status(session, Status.COMPLETED, Status.FAILED)

    assert done.status == Status.COMPLETED, done.error
    assert done.attempts == 2
    completions = (first.log() + second.log()).count(f"Completed session {session.pk}")
    assert completions == 1
    assert f"Completed session {session.pk}" in second.log()


def test_three_workers_run_thirty_sessions_each_exactly_once(make_session, start_worker):
    sessions = [make_session(prompt=f"job {i}", steps=2, width=64, height=64) for i in range(30)]
    workers = [start_worker(OMP_NUM_THREADS="1") for _ in range(3)]

    wait_for(
        lambda: GenerationSession.objects.filter(status=Status.COMPLETED).count() == 30,
        timeout=240,
        message="all thirty sessions to complete",
    )

    logs = "".join(worker.log() for worker in workers)
    for session in sessions:
        assert reload(session).attempts == 1
        assert logs.count(f"Running session {session.pk}") == 1
    assert "database is locked" not in logs.lower()
    assert "Traceback" not in logs
    assert not GenerationSession.objects.exclude(status=Status.COMPLETED).exists()


def test_a_poison_job_ends_failed_after_the_last_attempt(make_session, start_worker, settings):
    session = make_session(steps=150, width=128, height=128)
    for attempt in (1, 2):
        worker = start_worker(SD_WORKER_LEASE=LEASE, SD_MAX_ATTEMPTS="2")
        wait_for(
            lambda a=attempt: (s := reload(session)).attempts == a and s.current_step >= 1,
            timeout=120,
            message=f"attempt {attempt} to start",
        )
        kill_hard(worker)  # the job "kills" every worker that runs it

    start_worker(SD_WORKER_LEASE=LEASE, SD_MAX_ATTEMPTS="2")
    failed = wait_until_status(session, Status.FAILED, Status.PENDING, Status.COMPLETED)

    assert failed.status == Status.FAILED
    assert failed.error == "worker lost (attempt 2 of 2)"


def test_sigterm_lets_the_current_job_finish_within_the_grace_period(make_session, start_worker):
    session = make_session(steps=15, width=128, height=128)
    worker = start_worker("--grace", "120")
    wait_until_step(session, 2)

    worker.popen.send_signal(signal.SIGTERM)

    assert worker.popen.wait(timeout=120) == 0
    assert reload(session).status == Status.COMPLETED


def test_sigterm_past_the_grace_period_releases_the_job_to_another_worker(
    make_session, start_worker
):
    session = make_session(steps=150, width=128, height=128)
    leaving = start_worker("--grace", "0.2")
    wait_until_step(session, 2)

    leaving.popen.send_signal(signal.SIGTERM)

    assert leaving.popen.wait(timeout=60) == 0
    released = reload(session)
    assert released.status == Status.PENDING
    assert released.attempts == 0  # a release is not a failed attempt
    assert f"Released session {session.pk}" in leaving.log()

    start_worker()
    done = wait_until_status(session, Status.COMPLETED, Status.FAILED, timeout=180)
    assert done.status == Status.COMPLETED, done.error


def test_a_running_session_is_cancelled_at_its_next_step(make_session, start_worker, web_server):
    session = make_session(steps=150, width=128, height=128)
    worker = start_worker()
    with (
        httpx.Client(base_url=web_server.url, timeout=60) as http,
        http.stream("GET", f"/api/progress/{session.pk}") as stream,
    ):
        events = iter_events(stream.iter_lines())
        wait_until_step(session, 2)
        client = Client(enforce_csrf_checks=True)
        token = client.get("/").cookies["csrftoken"].value
        response = client.post(f"/api/sessions/{session.pk}/cancel", headers={"X-CSRFToken": token})
        assert response.status_code == 202
        messages = [e.data for e in events if e.data]

    assert messages[-1] == {"type": "cancelled"}
    cancelled = reload(session)
    assert cancelled.status == Status.CANCELLED
    assert cancelled.current_step < 150 and not cancelled.image
    follow_up = make_session(steps=2, width=64, height=64)
    assert wait_until_status(follow_up, Status.COMPLETED).status == Status.COMPLETED
    assert worker.popen.poll() is None


def test_out_of_memory_fails_the_session_and_the_worker_takes_the_next(make_session, monkeypatch):
    # There is no GPU here to run out of: the first pipeline call raises the
    # error PyTorch raises on CUDA OOM; everything else is real.
    import torch

    from generator.pipelines.torch_backend import TorchBackend

    real_generate = TorchBackend.generate_batch
    calls = []

    def generate_once_out_of_memory(self, requests, on_step, on_phase, on_start=None):
        calls.append(requests)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(self, requests, on_step, on_phase, on_start)

    monkeypatch.setattr(TorchBackend, "generate_batch", generate_once_out_of_memory)
    doomed = make_session(steps=2, width=64, height=64)
    next_one = make_session(steps=2, width=64, height=64)
    worker = Worker(poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until_status(next_one, Status.COMPLETED, Status.FAILED)
    finally:
        worker.stop()
        thread.join(timeout=60)

    failed = reload(doomed)
    assert failed.status == Status.FAILED
    assert failed.error.startswith("Out of memory")
    assert "Tried to allocate 20.00 GiB" in failed.error
    assert reload(next_one).status == Status.COMPLETED


def test_a_lost_worker_is_told_on_the_stream_and_its_restart_too(
    tmp_path, make_session, start_worker, settings
):
    settings.SD_WORKER_LEASE = float(LEASE)  # this process answers /api/sessions/
    server = WebServer(tmp_path, SD_WORKER_LEASE=LEASE)
    session = make_session(steps=60, width=128, height=128)
    events = []

    def read_stream():
        with httpx.stream("GET", f"{server.url}/api/progress/{session.pk}", timeout=120) as r:
            events.extend(e for e in iter_events(r.iter_lines()) if e.data)

    reader = threading.Thread(target=read_stream, daemon=True)
    try:
        reader.start()
        first = start_worker(SD_WORKER_LEASE=LEASE)
        wait_until_step(session, 3)
        kill_hard(first)
        killed_at = reload(session).current_step

        wait_for(lambda: any(e.data["type"] == "stalled" for e in events), timeout=30)
        body = Client().get(f"/api/sessions/{session.pk}").json()
        assert body["status"] == "running" and body["eta_seconds"] is None
        assert "stopped answering" in body["waiting_for"]

        start_worker(SD_WORKER_LEASE=LEASE)
        reader.join(timeout=180)
    finally:
        server.stop()

    messages = [e.data for e in events]
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "complete", kinds
    restart = kinds.index("restarted")
    assert messages[restart]["reason"] == "lost worker"
    steps_after = [m["current_step"] for m in messages[restart:] if m["type"] == "progress"]
    assert steps_after[0] < killed_at  # the bar went back: the job started again
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_worker_killed_while_it_starts_costs_the_job_no_attempt(make_session, start_worker):
    session = make_session(steps=2)
    cold = start_worker(SD_WORKER_LEASE=LEASE)
    # Claimed, and still importing its libraries or loading the model: kill it there.
    wait_for(
        lambda: (s := reload(session)).status == Status.RUNNING and s.current_step == 0,
        timeout=60,
        message="the cold worker to claim the job",
    )
    kill_hard(cold)
    assert reload(session).attempts == 0

    start_worker(SD_WORKER_LEASE=LEASE)
    done = wait_until_status(session, Status.COMPLETED, Status.FAILED)
    assert (done.status, done.attempts, done.restarts) == (Status.COMPLETED, 1, 1)


def model_copy(home, *, broken: bool):
    """The demo model copied to `home`/model; broken: its UNet weights deleted, index kept."""
    import shutil

    from generator.pipelines.demo import WEIGHTS

    folder = home / "model"
    shutil.copytree(WEIGHTS, folder)
    if broken:
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return folder


def test_a_worker_that_cannot_load_a_model_leaves_its_jobs_to_one_that_can(
    make_session, start_worker, tmp_path
):
    from generator.models import WorkerRecord

    # "~/model" names a folder on each worker's own host: two homes stand for two hosts.
    good_home, bad_home = tmp_path / "good", tmp_path / "bad"
    model_copy(good_home, broken=False)
    model_copy(bad_home, broken=True)
    start_worker(HOME=str(good_home))
    wait_for(lambda: WorkerRecord.objects.filter(ready=True).count() == 1, timeout=60)
    sessions = [make_session(model="~/model", steps=2) for _ in range(4)]
    # Routing off for it: by default a job of a model the good worker holds is left to
    # that worker (SD_ROUTE_GRACE), and the broken one would never try to load it.
    broken = start_worker(HOME=str(bad_home), SD_ROUTE_GRACE="0")

    for session in sessions:
        done = wait_until_status(session, Status.COMPLETED, Status.FAILED)
        assert done.status == Status.COMPLETED, done.error
        assert done.attempts == 1
    record = wait_for(lambda: WorkerRecord.objects.filter(cannot_load__has_key="pytorch ~/model"))
    assert "diffusion_pytorch_model" in record.get().cannot_load["pytorch ~/model"]
    assert broken.log().count("Cannot load ~/model") == 1  # it stopped trying
    assert "sdsite_workers_unhealthy 1.0" in Client().get("/metrics").content.decode()


def test_a_model_no_worker_can_load_fails_with_the_real_reason(make_session, start_worker):
    session = make_session(model="./no/such/model", steps=2)
    start_worker()
    done = wait_until_status(session, Status.COMPLETED, Status.FAILED)
    assert done.status == Status.FAILED
    assert done.error == (
        "Could not load the model: The model folder ./no/such/model does not exist on this worker."
    )


@pytest.mark.any_database
@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_a_hub_model_that_does_not_download_says_what_to_do(backend):
    """Nothing downloads here (the tests run with HF_HUB_OFFLINE=1, and this machine has no
    network): the real hub lookup fails, and the job's error says what to do about it."""
    from generator.pipelines import create_backend
    from generator.pipelines.sources import ModelDownloadFailed

    loading = create_backend(backend, "sdsite-tests/not-on-this-machine", "cpu")
    with pytest.raises(ModelDownloadFailed) as failed:
        loading.load(lambda phase: None)

    message = str(failed.value)
    assert "sdsite-tests/not-on-this-machine is not on this worker" in message
    assert "could not be downloaded from the Hugging Face Hub (HF_HUB_OFFLINE is set)" in message
    assert "SD_MODEL to a local folder" in message


@pytest.mark.any_database
def test_a_gpu_that_this_pytorch_cannot_use_is_a_setup_error_with_what_to_do():
    import torch

    from generator.pipelines import create_backend

    if torch.cuda.is_available():
        pytest.skip("this machine's PyTorch has a CUDA GPU")
    loading = create_backend("pytorch", "demo", "cuda")
    with pytest.raises(ValueError, match=r"^SD_DEVICE is cuda, but this PyTorch \(") as failed:
        loading.load(lambda phase: None)
    assert "or set SD_DEVICE=cpu" in str(failed.value)


@pytest.mark.any_database
def test_with_no_route_to_the_hub_the_reason_says_so(monkeypatch):
    """Offline without HF_HUB_OFFLINE, huggingface_hub's retry ends in "Cannot send a request,
    as the client has been closed", with the real error only in its log."""
    from huggingface_hub import constants

    from generator.pipelines.sources import why_not_downloaded

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.sdsite-test.invalid")  # RFC 2606
    closed = RuntimeError("Cannot send a request, as the client has been closed.")

    assert why_not_downloaded(closed).startswith("hub.sdsite-test.invalid cannot be reached: ")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_a_queued_job_wakes_an_idle_worker_at_once(make_session, start_worker):
    # A two-minute poll: only the notification can bring the job to the worker in time.
    worker = start_worker("--poll-interval", "120")
    wait_for(lambda: "Listening for new jobs" in worker.log(), timeout=60, message="the listener")
    session = make_session(steps=2)
    done = wait_until_status(session, Status.COMPLETED, Status.FAILED, timeout=60)
    assert done.status == Status.COMPLETED, done.error
    assert (done.started_at - done.created_at).total_seconds() < 30


def test_a_worker_batches_compatible_jobs_each_with_its_own_progress_and_image(
    make_session, start_worker
):
    import numpy as np
    from PIL import Image

    from generator.pipelines import create_backend
    from generator.worker.batch import request_of

    prompts = ["a red circle on a blue background", "a green square", "a white triangle"]
    batched = [
        make_session(prompt=prompt, seed=index, steps=8, width=128, height=128)
        for index, prompt in enumerate(prompts)
    ]
    other = make_session(prompt="a red circle", seed=9, steps=6, width=128, height=128)
    worker = start_worker(SD_WORKER_BATCH="4")
    for session in [*batched, other]:
        done = wait_until_status(session, Status.COMPLETED, Status.FAILED)
        assert done.status == Status.COMPLETED, done.error

    log = worker.log()
    for session in batched:
        assert f"Running session {session.pk} (pytorch, demo, attempt 1, batch of 3)" in log
    assert f"Running session {other.pk} (pytorch, demo, attempt 1)" in log
    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    for session in map(reload, batched):
        assert (session.current_step, session.total_steps, len(session.step_seconds)) == (8, 8, 8)
        alone = backend.generate(request_of(session), lambda *a: True, lambda phase: None)
        with Image.open(session.image.path) as image:
            difference = np.abs(np.asarray(image.convert("RGB"), int) - np.asarray(alone, int))
        assert difference.max() <= 2, session.prompt  # see BATCH_TOLERANCE in test_ecosystem
    previews = {reload(session).preview.name for session in batched}
    assert len(previews) == 3 and "" not in previews  # each its own live preview


def test_a_job_cancelled_in_a_batch_leaves_it_and_the_others_finish(make_session, start_worker):
    from generator.services import session_cancel

    sessions = [
        make_session(prompt=f"a red circle {n}", seed=n, steps=60, width=64, height=64)
        for n in range(3)
    ]
    start_worker(SD_WORKER_BATCH="3")
    wait_until_step(sessions[1], 2)
    session_cancel(sessions[1].pk)

    cancelled = wait_until_status(sessions[1], Status.CANCELLED, Status.COMPLETED)
    assert cancelled.status == Status.CANCELLED and not cancelled.image
    assert {reload(s).status for s in (sessions[0], sessions[2])} == {Status.RUNNING}
    for session in (sessions[0], sessions[2]):
        done = wait_until_status(session, Status.COMPLETED, Status.FAILED)
        assert done.status == Status.COMPLETED, done.error
        assert done.current_step == 60
    assert reload(sessions[1]).current_step < 60
