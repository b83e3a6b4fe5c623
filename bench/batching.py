"""Jobs a minute with and without batching (SD_WORKER_BATCH), on both backends.

    .venv/bin/python -m bench.batching [--jobs 8] [--size 512] [--steps 20] [--batches 1 4]
    SD_DEVICE=cuda .venv/bin/python -m bench.batching --backends pytorch --model sd15-shaped

For each backend and batch setting, a fresh `runworker` process first runs one
batch's worth of jobs to warm up (the model load, and OpenVINO's compile for the
batch's shapes); then `--jobs` jobs that differ only in their prompts and seeds
are queued at once. The figure is jobs a minute from the first claim to the last
completion, with the demo model.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench._setup import ROOT, django_on_scratch_data, machine_line
from bench.sd15_shaped import model_argument

PROMPTS = ["a red circle", "a blue square on a yellow background", "a green triangle"]


def queue_and_wait(count: int, backend: str, size: int, steps: int, first_seed: int):
    from generator.models import GenerationSession, Status
    from generator.services import session_create
    from tests.support.processes import wait_for

    sessions = [
        session_create(
            prompt=PROMPTS[n % len(PROMPTS)], seed=first_seed + n, steps=steps, width=size,
            height=size, backend=backend,
        )
        for n in range(count)
    ]  # fmt: skip
    done = GenerationSession.objects.filter(pk__in=[s.pk for s in sessions])
    ended = [Status.COMPLETED, Status.FAILED, Status.CANCELLED]
    wait_for(lambda: not done.exclude(status__in=ended).exists(), timeout=1800, interval=0.2)
    if failed := done.exclude(status=Status.COMPLETED).first():
        raise SystemExit(f"A job ended {failed.status}: {failed.error}")
    return list(done)


def jobs_per_minute(backend: str, batch: int, jobs: int, size: int, steps: int) -> float:
    from tests.support.processes import WorkerProcess

    logs = Path(tempfile.mkdtemp(prefix="sdsite-bench-logs-"))
    worker = WorkerProcess(logs, SD_WORKER_BATCH=batch)
    try:
        queue_and_wait(batch, backend, size, steps, first_seed=1000)  # warm-up
        finished = queue_and_wait(jobs, backend, size, steps, first_seed=1)
    finally:
        worker.stop()
    elapsed = max(s.finished_at for s in finished) - min(s.started_at for s in finished)
    return jobs / elapsed.total_seconds() * 60


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backends", nargs="+", default=["pytorch", "openvino"])
    parser.add_argument("--model", default="demo", help="demo, sd15-shaped, a folder or hub id")
    args = parser.parse_args()
    models_dir = ROOT / "var" / "test-models"
    os.environ["SD_MODEL"] = model_argument(args.model, models_dir)  # the jobs' and the worker's
    django_on_scratch_data(str(models_dir))
    print(machine_line())
    print(f"{args.jobs} jobs, {args.model} model, {args.size} px, {args.steps} steps, Euler")
    print(f"{'backend':<10} {'batch':>5} {'jobs/min':>9} {'vs batch 1':>10}")
    for backend in args.backends:
        single = None
        for batch in args.batches:
            started = time.monotonic()
            rate = jobs_per_minute(backend, batch, args.jobs, args.size, args.steps)
            single = single or rate
            print(
                f"{backend:<10} {batch:>5} {rate:>9.2f} {rate / single:>9.2f}x"
                f"   ({time.monotonic() - started:.0f} s with warm-up)",
                flush=True,
            )


if __name__ == "__main__":
    main()
