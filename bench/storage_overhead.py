"""What keeping the media in an S3 bucket adds to a job, against the local disk.

    .venv/bin/python -m bench.storage_overhead [--jobs 6] [--rounds 2] [--steps 10]

The same CPU demo job (image to image from a 128x128 input uploaded through the service,
so the worker reads an input, writes its live previews and saves its PNG) run N times by
one real worker process with SD_MEDIA_STORAGE=local, then N times by one with
SD_MEDIA_STORAGE=s3 against moto's S3 server on loopback (tests.support.s3), in rounds
(local, s3, local, s3, ...) so the machine's drift falls on both. Each job runs alone,
queued when the previous one ended. A job's time is its row's claim to its completion
(reading the input, every step and preview, saving the image); each worker's first job
(loading the pipeline) is left out.

moto keeps objects in memory and answers on loopback: the figure is what the S3 protocol,
boto3 and the extra requests (a HEAD before each write, the PUTs, the input's GET) cost,
not a network's latency or a disk's; add the round trips of a real bucket's distance.
"""

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench._setup import django_on_scratch_data, machine_line


def queue_job(session_create_batch, image, steps: int):
    return session_create_batch(
        prompt="a lighthouse at dawn",
        steps=steps,
        strength=1.0,
        images={"init_image": image},
    )[0]


def run_block(kind: str, env: dict, jobs: int, steps: int, image, logs: Path) -> list[float]:
    from generator.models import GenerationSession
    from generator.services import session_create_batch
    from tests.support.processes import WorkerProcess, wait_for

    worker = WorkerProcess(logs, "--poll-interval", "0.02", **env)
    seconds = []
    try:
        for index in range(jobs + 1):
            session = queue_job(session_create_batch, image, steps)
            done = GenerationSession.objects.filter(pk=session.pk, finished_at__isnull=False)
            wait_for(done.exists, timeout=300, interval=0.05, message=f"a {kind} job")
            session.refresh_from_db()
            if session.status != "completed":
                raise SystemExit(f"{kind} job failed: {session.error}\n{worker.log()[-2000:]}")
            if index:  # the first loads the pipeline
                seconds.append((session.finished_at - session.started_at).total_seconds())
    finally:
        worker.stop()
    return seconds


def storage_operations(samples: int) -> dict:
    """Median seconds of what a job does with its files, on the storage now in force: a
    preview written (a 2 KB JPEG, and the one it replaces deleted), the image written (a
    50 KB PNG), the input read."""
    from django.core.files.storage import default_storage

    from generator.files import save_whole

    rng = random.Random(0)
    preview = bytes(rng.getrandbits(8) for _ in range(2_000))
    image = bytes(rng.getrandbits(8) for _ in range(50_000))
    times = {"preview write + delete": [], "image write": [], "input read": []}
    for index in range(samples):
        began = time.perf_counter()
        name = save_whole(f"previews/bench-{index}.jpg", preview)
        default_storage.delete(name)
        wrote = time.perf_counter()
        name = save_whole(f"images/bench-{index}.png", image)
        saved = time.perf_counter()
        with default_storage.open(name) as file:
            file.read()
        read = time.perf_counter()
        default_storage.delete(name)
        times["preview write + delete"].append(wrote - began)
        times["image write"].append(saved - wrote)
        times["input read"].append(read - saved)
    return {what: statistics.median(values) for what, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="timed jobs per block (6)")
    parser.add_argument("--rounds", type=int, default=2, help="local/s3 rounds (2)")
    parser.add_argument("--steps", type=int, default=10, help="steps per job (10)")
    parser.add_argument(
        "--samples", type=int, default=50, help="storage operations timed per storage (50)"
    )
    args = parser.parse_args()

    data_dir = django_on_scratch_data(
        str(Path(__file__).resolve().parent.parent / "var" / "test-models")
    )
    from PIL import Image

    from tests.support.s3 import CREDENTIALS, S3Server

    os.environ.update(CREDENTIALS)  # this process stores the inputs, as the web would
    s3 = S3Server()
    image = Image.radial_gradient("L").resize((128, 128)).convert("RGB")
    logs = Path(tempfile.mkdtemp(prefix="sdsite-bench-storage-"))
    kinds = {
        "local": {"DATA_DIR": data_dir},
        "s3": {"DATA_DIR": data_dir, **s3.env("bench")},
    }
    times = {kind: [] for kind in kinds}
    operations = {}
    started = time.monotonic()
    for round_ in range(args.rounds):
        for kind, env in kinds.items():
            with storage_of(kind, s3):
                if round_ == 0:
                    operations[kind] = storage_operations(args.samples)
                times[kind] += run_block(kind, env, args.jobs, args.steps, image, logs)
    print(machine_line())
    print(
        "load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    print(
        f"demo model, image to image 128x128, {args.steps} steps, previews on; "
        f"{args.rounds} rounds of {args.jobs} timed jobs per storage "
        f"({time.monotonic() - started:.0f} s in all)"
    )
    local, remote = statistics.median(times["local"]), statistics.median(times["s3"])
    for kind, values in times.items():
        print(
            f"{kind:>5}: median {statistics.median(values):.3f} s per job "
            f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"
        )
    print(f"s3 - local: {remote - local:+.3f} s per job ({(remote / local - 1) * 100:+.1f} %)")
    print(f"storage operations in this process, median of {args.samples}, ms:")
    for what in operations["local"]:
        print(
            f"  {what:>22}: local {operations['local'][what] * 1000:7.2f}, "
            f"s3 {operations['s3'][what] * 1000:7.2f}"
        )


def storage_of(kind: str, s3):
    """This process's storage (it stores the inputs, as the web would): the settings' own,
    or the bucket's."""
    import contextlib

    from django.conf import settings
    from django.test import override_settings

    if kind == "local":
        return contextlib.nullcontext()
    return override_settings(
        SD_MEDIA_STORAGE="s3",
        SD_S3_BUCKET=s3.bucket,
        SD_S3_ENDPOINT_URL=s3.url,
        SD_S3_PREFIX="bench",
        STORAGES={**settings.STORAGES, "default": s3_storage(s3)},
    )


def s3_storage(s3) -> dict:
    return {
        "BACKEND": "generator.s3_storage.MediaS3Storage",
        "OPTIONS": {
            "bucket_name": s3.bucket,
            "endpoint_url": s3.url,
            "location": "bench",
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
        },
    }


if __name__ == "__main__":
    main()
