"""Several models and restricted workers: who claims what, and who says nobody will."""

import json

import pytest
from django.utils import timezone

from generator.models import GenerationSession, Status, WorkerRecord
from generator.pipelines import demo
from generator.worker.loop import Worker
from tests.support.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def worker_id_of(process) -> str:
    log = wait_for(lambda: "ready" in process.log() and process.log(), timeout=60)
    return log.split("Worker ", 1)[1].split(" ", 1)[0]


def test_a_worker_restricted_to_one_model_never_claims_another(
    make_session, start_worker, settings
):
    other_model = str(demo.WEIGHTS)  # the demo folder, named as a path
    demo_jobs = [make_session(steps=2, width=64, height=64) for _ in range(3)]
    other_jobs = [make_session(steps=2, width=64, height=64, model=other_model) for _ in range(3)]
    demo_worker = start_worker("--model", "demo")
    other_worker = start_worker("--model", other_model)
    demo_id, other_id = worker_id_of(demo_worker), worker_id_of(other_worker)

    wait_for(
        lambda: GenerationSession.objects.filter(status=Status.COMPLETED).count() == 6,
        timeout=180,
        message="all six to complete",
    )
    for session in demo_jobs:
        session.refresh_from_db()
        assert session.worker_id == demo_id
    for session in other_jobs:
        session.refresh_from_db()
        assert session.worker_id == other_id


def test_a_worker_restricted_to_a_backend_leaves_the_other_alone(make_session, start_worker):
    torch_job = make_session(steps=2, width=64, height=64, backend="pytorch")
    openvino_job = make_session(steps=2, width=64, height=64, backend="openvino")
    start_worker("--backend", "openvino")

    wait_for(
        lambda: GenerationSession.objects.get(pk=openvino_job.pk).status == Status.COMPLETED,
        timeout=180,
    )
    torch_job.refresh_from_db()
    assert torch_job.status == Status.PENDING


def live_worker(worker_id, models="", backends=""):
    WorkerRecord.objects.create(
        id=worker_id,
        host="h",
        pid=1,
        served_models=models,
        served_backends=backends,
        last_seen_at=timezone.now(),
    )


def waiting_for(client, session):
    return client.get(f"/api/sessions/{session.pk}").json()["waiting_for"]


def test_the_api_says_when_nobody_can_serve_a_queued_session(client, make_session):
    session = make_session(backend="openvino")
    assert "No worker is running" in waiting_for(client, session)

    live_worker("torch-only", backends="pytorch")
    assert waiting_for(client, session) == (
        "No running worker serves model 'demo' with the openvino backend."
    )

    live_worker("any")
    assert waiting_for(client, session) is None


def test_the_model_must_be_one_of_sd_models(client, settings):
    settings.SD_MODELS = ["demo", "stabilityai/sd-turbo"]
    body = {"prompt": "x", "model": "stabilityai/sd-turbo"}
    response = client.post("/api/generate", json.dumps(body), content_type="application/json")
    assert response.status_code == 202
    assert GenerationSession.objects.get().model == "stabilityai/sd-turbo"

    body["model"] = "someone/else"
    response = client.post("/api/generate", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["model"]


def test_a_worker_keeps_only_its_most_recently_used_pipelines(settings):
    settings.SD_WORKER_PIPELINES = 2
    worker = Worker()
    names = ["demo", str(demo.WEIGHTS), str(demo.WEIGHTS) + "/"]
    first = worker.backend_for("pytorch", names[0], lambda phase: None)
    worker.backend_for("pytorch", names[1], lambda phase: None)
    assert worker.backend_for("pytorch", names[0], lambda phase: None) is first  # still warm
    worker.backend_for("pytorch", names[2], lambda phase: None)

    assert list(worker.pipelines) == [("pytorch", names[0]), ("pytorch", names[2])]
