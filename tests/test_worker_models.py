"""A worker's loaded models: switching checkpoints unloads the least recently used within
SD_WORKER_PIPELINES and SD_WORKER_MEMORY_MB, the load is a phase of the job's progress that
names the model ("loading demo2..."), and workers take the jobs of the models they hold first
(within SD_ROUTE_GRACE), told by each other's records."""

import shutil
from datetime import datetime, timedelta

import pytest
from django.db import transaction

from generator.models import GenerationSession, Status, WorkerRecord
from generator.pipelines import demo
from generator.pipelines.sources import estimated_bytes
from generator.services import session_create
from generator.worker.claims import claim_next, routed
from generator.worker.heartbeat import register_worker
from generator.worker.loop import Worker
from tests.support.processes import RecordedWrites, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

JOB = dict(prompt="a red circle", steps=2, width=64, height=64, seed=1)


@pytest.fixture
def two_models(tmp_path, settings):
    """The demo and a copy of its folder: to a worker, two models."""
    copy = str(shutil.copytree(demo.WEIGHTS, tmp_path / "demo2"))
    settings.SD_MODELS = ["demo", copy]
    # Every step written: coalesced writes could skip from loading straight to the last step.
    settings.SD_STEP_WRITE_INTERVAL = 0
    return "demo", copy


def run(worker: Worker, model: str) -> list[str]:
    """Queue and run one job of `model` on `worker`: the phases it wrote."""
    session = session_create(model=model, **JOB)
    job = claim_next(worker.worker_id)
    assert job.session.pk == session.pk
    with RecordedWrites() as writes:
        worker.process([job])
    session.refresh_from_db()
    assert session.status == Status.COMPLETED, session.error
    return writes.phases


def loaded(worker_id: str) -> list[str]:
    return WorkerRecord.objects.get(pk=worker_id).loaded_models.splitlines()


@pytest.mark.any_database
def test_a_worker_keeps_its_models_within_the_count_and_the_memory_and_says_what_it_loads(
    two_models, settings
):
    first, second = two_models
    settings.SD_WORKER_PIPELINES = 2
    worker = Worker(once=True, worker_id="two")
    register_worker("two", worker.serves)
    assert run(worker, first)[:2] == ["loading demo...", "denoising"]
    size = worker.pipelines[("pytorch", first)].memory_bytes()
    # The demo's weights are float16 files, in float32 on the CPU: twice their bytes (less
    # the files' headers, plus a few buffers).
    assert abs(size - 2 * estimated_bytes(first)) < 0.02 * 2 * estimated_bytes(first)
    assert not any(p.startswith("loading") for p in run(worker, first))  # warm
    assert run(worker, second)[0] == "loading demo2..."
    assert loaded("two") == ["pytorch demo", f"pytorch {second}"]
    run(worker, first)  # used last: the second is the least recently used now
    assert list(worker.pipelines) == [("pytorch", second), ("pytorch", first)]

    # A budget that holds one of them: the other goes before the next loads.
    settings.SD_WORKER_MEMORY_MB = int(size * 1.5) // 2**20
    small = Worker(once=True, worker_id="small")
    register_worker("small", small.serves)
    run(small, first)
    assert run(small, second)[0] == "loading demo2..."
    assert list(small.pipelines) == [("pytorch", second)]
    assert loaded("small") == [f"pytorch {second}"]


def test_a_worker_takes_its_loaded_models_jobs_first_but_none_past_the_grace():
    now = datetime(2026, 1, 1, 12, 0, 0)
    cutoff = now - timedelta(seconds=5)
    fresh, old = now - timedelta(seconds=1), now - timedelta(seconds=9)
    rows = [(1, "pytorch", "a", fresh), (2, "pytorch", "b", fresh), (3, "pytorch", "c", fresh)]
    assert routed(rows, {"pytorch b"}, set(), cutoff) == 2  # its own, ahead of the head
    assert routed(rows, set(), {"pytorch a"}, cutoff) == 2  # "a" waits for its worker
    assert routed(rows, set(), {"pytorch a", "pytorch b", "pytorch c"}, cutoff) is None
    waited = [(1, "pytorch", "a", old), *rows[1:]]
    assert routed(waited, {"pytorch b"}, {"pytorch a"}, cutoff) == 1  # past the grace: anyone
    assert routed(rows, set(), set(), cutoff) == 1  # nobody holds anything: queue order


@pytest.mark.any_database
def test_two_workers_each_take_the_jobs_of_the_model_it_has_loaded(two_models, start_worker):
    first, second = two_models
    env = dict(SD_MODELS=f"demo,{second}", SD_WORKER_PIPELINES=1, SD_ROUTE_GRACE=60)
    done = GenerationSession.objects.filter(status=Status.COMPLETED)

    def finished(*sessions):
        wait_for(lambda: done.filter(pk__in=[s.pk for s in sessions]).count() == len(sessions),
                 timeout=300, message="the jobs to complete")  # fmt: skip
        return {s.pk: GenerationSession.objects.get(pk=s.pk).worker_id for s in sessions}

    start_worker(**env)
    finished(session_create(model=first, **JOB))
    [a] = WorkerRecord.objects.values_list("pk", flat=True)
    assert loaded(a) == ["pytorch demo"]
    start_worker(**env)
    wait_for(lambda: WorkerRecord.objects.filter(ready=True).count() == 2, timeout=120)
    [b] = WorkerRecord.objects.exclude(pk=a).values_list("pk", flat=True)
    # The second model's job is first in the queue; A takes the one of its own model behind
    # it, and B (whose claim sees A's model) the second model's, which nobody holds.
    with transaction.atomic():
        for_b = session_create(model=second, **JOB)
        for_a = session_create(model=first, **(JOB | {"steps": 8}))
    assert finished(for_b, for_a) == {for_b.pk: b, for_a.pk: a}
    assert (loaded(a), loaded(b)) == (["pytorch demo"], [f"pytorch {second}"])

    with transaction.atomic():
        jobs = [session_create(model=m, **JOB) for m in (first, second, first, second)]
    ran_on = finished(*jobs)
    assert [ran_on[job.pk] for job in jobs] == [a, b, a, b]
    assert (loaded(a), loaded(b)) == (["pytorch demo"], [f"pytorch {second}"])
