"""How fast the database queue hands out work.

    .venv/bin/python -m bench.queue [--sessions 600] [--jobs 40]
    bin/with-postgres .venv/bin/python -m bench.queue      # the same on PostgreSQL

Prints claim throughput (sessions claimed per second by 1 and by 3 concurrent
claimer processes, each session claimed exactly once) and the pickup delay of
an idle `runworker` (woken by LISTEN/NOTIFY on PostgreSQL, its 0.2 s poll on
SQLite): the time from the row's creation by POST /api/generate to its claim,
median and p95.
"""

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import ROOT, django_on_scratch_data, machine_line


def claimer(worker_id, data_dir, database_url, claimed_queue):
    import os

    os.environ["DATA_DIR"] = data_dir
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
    import django

    django.setup()
    from generator.worker.claims import claim_next

    claimed = []
    started = time.time()
    while (job := claim_next(worker_id)) is not None:
        claimed.append(str(job.session.pk))
    claimed_queue.put((claimed, started, time.time()))


def claim_throughput(count: int, processes: int, data_dir: str) -> float:
    import os

    from generator.models import GenerationSession

    GenerationSession.objects.all().delete()
    GenerationSession.objects.bulk_create(
        GenerationSession(
            prompt=f"p{i}",
            seed=i,
            backend="pytorch",
            model="demo",
            total_steps=1,
            width=128,
            height=128,
        )
        for i in range(count)
    )
    # Fresh processes, not forks: a forked child would share this one's connection.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(
            target=claimer, args=(f"c{n}", data_dir, os.environ.get("DATABASE_URL"), queue)
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    claimed = [pk for pks, _, _ in results for pk in pks]
    # From the first claim to the last, so process start-up is not counted.
    elapsed = max(end for *_, end in results) - min(start for _, start, _ in results)
    for worker in workers:
        worker.join()
    assert len(claimed) == len(set(claimed)) == count, "a session was claimed twice or not at all"
    # The claimers have no worker rows: left running, a real worker would
    # rightly recover all of these as lost.
    GenerationSession.objects.all().delete()
    return count / elapsed


def pickup_delays(jobs: int) -> list[float]:
    import httpx

    from generator.models import GenerationSession, Status
    from tests.support.processes import WebServer, WorkerProcess, wait_for

    logs = Path(tempfile.mkdtemp(prefix="sdsite-bench-logs-"))
    # One client posting jobs back to back: past the default per-client rate limit.
    server = WebServer(logs, SD_RATE_LIMIT="", SD_MAX_QUEUED_PER_OWNER=0)
    worker = WorkerProcess(logs, "--poll-interval", "0.2")
    delays = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            client.get("/")
            headers = {"X-CSRFToken": client.cookies["csrftoken"]}
            body = {"prompt": "warm-up", "steps": 1, "width": 64, "height": 64}
            for n in range(jobs + 1):
                response = client.post("/api/generate", json=body, headers=headers)
                assert response.status_code == 202, response.text
                session_id = response.json()["session_id"]
                session = wait_for(
                    lambda sid=session_id: (
                        (s := GenerationSession.objects.get(pk=sid)).status == Status.COMPLETED
                        and s
                    ),
                    timeout=120,
                )
                if n:  # the first job loads the model
                    delays.append((session.started_at - session.created_at).total_seconds())
                # Let the worker go idle (mid-poll) before the next request.
                time.sleep(0.05 + (n % 7) * 0.03)
    finally:
        worker.stop()
        server.stop()
    return delays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    data_dir = django_on_scratch_data(str(ROOT / "var" / "test-models"))
    from django.db import connection

    print(machine_line())
    print(f"database: {connection.vendor}\n")
    for processes in (1, 3):
        rate = claim_throughput(args.sessions, processes, str(data_dir))
        print(f"claim throughput, {processes} claimer(s): {rate:,.0f} sessions/s")
    delays = pickup_delays(args.jobs)
    median = statistics.median(delays) * 1000
    p95 = statistics.quantiles(delays, n=20)[-1] * 1000
    how = "woken by LISTEN/NOTIFY" if connection.vendor == "postgresql" else "polling every 0.2 s"
    print(
        f"pickup delay, idle worker {how} ({len(delays)} jobs): "
        f"median {median:.0f} ms, p95 {p95:.0f} ms, max {max(delays) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
