"""What progress tracking costs a fast job, and what the database's distance adds.

    bin/with-postgres .venv/bin/python -m bench.progress_overhead [--delay-ms 2] [--pairs 30]
    bin/with-postgres .venv/bin/python -m bench.progress_overhead --compare tracking
    SD_DEVICE=cuda bin/with-postgres .venv/bin/python -m bench.progress_overhead \
        --model sd15-shaped --size 512 --steps 20      # a real GPU job's steps (20 to 30 ms)

The same warm job (demo model, 64x64, 40 steps: a few ms a step, like a GPU) run by
the worker's own code (claim, step writes through the ProgressWriter, previews,
completion) in one worker process, reaching PostgreSQL through a local TCP proxy
that holds every packet 0 or --delay-ms in each direction. The delay switches
between jobs, in pairs (which of the two goes first alternates), so the machine's
drift from one job to the next (a few %, more than the effect measured) falls on
both alike. `--compare tracking` pairs, instead, jobs whose progress writes do
nothing (the job's step, phase and start writes return at once) with jobs as shipped,
both with no delay: what progress tracking costs at all.

Prints the median job time of each kind, the median of the pairs' differences as a
share of the job with its 95 % interval (bootstrap over the pairs), split into the
job's thread waiting (off the CPU: on its own queries, on the GIL, preempted) and
computing (the same work either way, so its difference is the machine's: the other
cores' activity through shared caches and clocks, and noise, which on this VM is
large), and how long the job itself waited on the database (the one path by which
distance reaches it; the step and preview writes are the writer thread's).

On a machine with two cores or more, the proxy and PostgreSQL are kept off one core,
which the job has to itself: on this 2-core VM the proxy's wake-ups (it sleeps out the
delay per packet, so it uses more CPU at 2 ms than at 0) otherwise preempt the
denoising thread, a cost of the bench and not of the distance, which on a real network
costs no CPU.
"""

import argparse
import os
import queue
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlparse

from bench._setup import ROOT, machine_line
from bench.sd15_shaped import model_argument


def relay(source: socket.socket, target: socket.socket, delay: "Delay") -> None:
    """Copy one direction of a connection, each chunk sent `delay.seconds` after it
    arrived, in order. Blocking sockets and a sender thread: the proxy uses 10 to 12 ms
    of CPU a job at 0 ms and 15 to 17 at 2 ms, where the asyncio relay it replaces used
    22 to 28 and 32 to 46 (on 2 cores, the proxy's CPU can show up as job time)."""
    chunks: queue.SimpleQueue = queue.SimpleQueue()

    def send() -> None:
        try:
            while (item := chunks.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while data := source.recv(65536):
            chunks.put((time.monotonic() + delay.seconds, data))
    except OSError:
        pass
    chunks.put(None)
    sender.join()


class Delay:
    seconds = 0.0


def start_proxy(socket_path: str, delay: Delay, cores: set[int]) -> int:
    """A TCP port on 127.0.0.1 forwarding to PostgreSQL's Unix socket, `delay` each way;
    its threads run on `cores`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        os.sched_setaffinity(0, cores)  # this thread, and the ones it starts
        while True:
            client, _ = listener.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(socket.AF_UNIX)
            server.connect(socket_path)
            threading.Thread(target=connect, args=(client, server), daemon=True).start()

    def connect(client: socket.socket, server: socket.socket) -> None:
        back = threading.Thread(target=relay, args=(server, client, delay), daemon=True)
        back.start()
        relay(client, server, delay)
        back.join()
        client.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def postgres_pids(lock_file: str) -> list[int]:
    """The postmaster (first line of its socket's lock file) and its children."""
    postmaster = int(Path(lock_file).read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def keep_on(pids: list[int], cores: set[int]) -> bool:
    try:
        for pid in pids:
            os.sched_setaffinity(pid, cores)
    except OSError:  # not ours to move
        return False
    return True


def bootstrap_interval(values: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95 % interval of the median of `values`, resampled with a fixed seed."""
    pick = random.Random(0).choices
    medians = sorted(statistics.median(pick(values, k=len(values))) for _ in range(rounds))
    return medians[int(rounds * 0.025)], medians[int(rounds * 0.975) - 1]


def child() -> None:
    """Run a warm job for each line on stdin ("write": as shipped; else with progress
    writes that do nothing); print a `Job`'s fields."""
    job_cores, other_cores = (
        {int(core) for core in os.environ[name].split(",")} for name in ("BENCH_JOB", "BENCH_REST")
    )
    os.sched_setaffinity(0, job_cores)  # this (the denoising) thread
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
    import django

    django.setup()
    import torch
    from django.db import connection

    from generator.services import session_create
    from generator.worker.claims import ClaimedJob, claim_next
    from generator.worker.loop import Worker
    from generator.worker.step_reporter import ProgressWriter

    write_steps = ProgressWriter.run

    def write_steps_elsewhere(writer):
        # The bookkeeping runs beside the denoising, as on a GPU machine's free cores.
        os.sched_setaffinity(0, other_cores)
        write_steps(writer)

    ProgressWriter.run = write_steps_elsewhere

    # One core denoises, as a GPU would; the others are left to the bookkeeping, the
    # database and this benchmark's proxy, which on a saturated 2-core machine would
    # otherwise show up as job time wherever they ran.
    torch.set_num_threads(1)
    worker = Worker(once=True, worker_id="bench")
    waited = [0.0]

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            waited[0] += time.perf_counter() - started

    shipped = ClaimedJob.record_step, ClaimedJob._update

    def write_nothing(*args, **kwargs) -> bool:
        return True

    for line in sys.stdin:
        ClaimedJob.record_step, ClaimedJob._update = (
            shipped if line.strip() == "write" else (write_nothing, write_nothing)
        )
        size, steps = int(os.environ["BENCH_SIZE"]), int(os.environ["BENCH_STEPS"])
        session_create(
            prompt="a red circle on a blue background", steps=steps, width=size, height=size
        )
        job = claim_next("bench")
        waited[0] = 0.0
        switched = switches()
        started, computed = time.perf_counter(), time.thread_time()
        with connection.execute_wrapper(timed):
            worker.process([job])
        seconds, computed = time.perf_counter() - started, time.thread_time() - computed
        print(seconds, computed, waited[0], switches() - switched, flush=True)


def switches() -> int:
    """The calling thread's context switches so far (voluntary: it waited; or not)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_nvcsw + usage.ru_nivcsw


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--pairs", type=int, default=30, help="pairs of warm jobs")
    parser.add_argument(
        "--compare",
        choices=("distance", "tracking"),
        default="distance",
        help="no delay against --delay-ms (default), or no progress writes against them",
    )
    parser.add_argument("--model", default="demo", help="demo, sd15-shaped, a folder or hub id")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--show-jobs", action="store_true", help="also print every job's time")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("Run it under bin/with-postgres: it needs a PostgreSQL DATABASE_URL.")
    parsed = urlparse(url)
    host = unquote(parsed.netloc.rsplit("@", 1)[-1])  # bin/with-postgres: the socket folder
    socket_dir = parse_qs(parsed.query).get("host", [host])[0]
    if not socket_dir.startswith("/"):
        raise SystemExit("The proxy forwards to PostgreSQL's Unix socket (bin/with-postgres).")
    socket_path = f"{socket_dir}/.s.PGSQL.{parsed.port or 5432}"
    cores = os.sched_getaffinity(0)
    others = cores - {min(cores)} or cores  # the job's core: min(cores)
    kept_apart = others != cores and keep_on(postgres_pids(socket_path + ".lock"), others)
    if not kept_apart:
        others = cores
    delay = Delay()
    proxy = start_proxy(socket_path, delay, others)
    model = model_argument(args.model, os.environ.get("SD_MODELS_DIR", ROOT / "var" / "models"))
    relayed = f"postgres://{quote(parsed.username or 'postgres')}@127.0.0.1:{proxy}{parsed.path}"
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.progress_overhead", "--child"],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=relayed, HF_HUB_OFFLINE="1", SD_MODEL=model,
                 BENCH_SIZE=str(args.size), BENCH_STEPS=str(args.steps),
                 BENCH_JOB=str(min(cores)) if kept_apart else ",".join(map(str, cores)),
                 BENCH_REST=",".join(map(str, others))),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip

    proxy_cpu = {}

    def job(arm: Arm) -> Job:
        delay.seconds = arm.delay_ms / 1000
        before = time.process_time()
        worker.stdin.write("write\n" if arm.writes else "skip\n")
        worker.stdin.flush()
        done = Job(*map(float, worker.stdout.readline().split()))
        proxy_cpu.setdefault(arm.delay_ms, []).append(time.process_time() - before)
        return done

    if args.compare == "tracking":
        arms = Arm("no progress writes", 0, False), Arm("progress writes", 0, True)
    else:
        arms = Arm("no delay", 0, True), Arm(f"{args.delay_ms:g} ms each way", args.delay_ms, True)
    job(arms[1])  # loads the model
    runs = ([], [])
    for pair in range(args.pairs):
        for side in (1, 0) if pair % 2 else (0, 1):
            runs[side].append(job(arms[side]))
    worker.stdin.close()
    worker.wait()
    report(args, arms, *runs, proxy_cpu, min(cores) if kept_apart else None)


class Arm(NamedTuple):
    """One kind of job of the pairs."""

    label: str
    delay_ms: float
    writes: bool


class Job(NamedTuple):
    seconds: float
    computing: float
    """The job's thread on the CPU (`time.thread_time`)."""
    on_database: float
    """The job's thread in its own queries."""
    switches: float
    """The job's thread's context switches (each a wait for the GIL, the database, ...)."""

    @property
    def waiting(self) -> float:
        """Off the CPU: on the database, on the GIL, or preempted."""
        return self.seconds - self.computing


def report(args, arms, base: list[Job], other: list[Job], proxy_cpu: dict, job_core) -> None:
    if args.show_jobs:
        for arm, jobs in zip(arms, (base, other), strict=True):
            print(f"ms a job, {arm.label}:", [round(job.seconds * 1000) for job in jobs])
    typical = statistics.median(job.seconds for job in base)

    def paired(field) -> str:
        """The median of the pairs' differences in `field`, with its interval, in ms and
        as a share of the typical job."""
        differences = [field(b) - field(a) for a, b in zip(base, other, strict=True)]
        middle, (low, high) = statistics.median(differences), bootstrap_interval(differences)
        return (
            f"{middle * 1000:+.1f} ms ({middle / typical:+.2%}; 95 % interval "
            f"{low / typical:+.2%} to {high / typical:+.2%})"
        )

    def at_each(field, shown=lambda seconds: f"{seconds * 1000:.1f} ms") -> str:
        return ", ".join(
            f"{shown(statistics.median(map(field, jobs)))} ({arm.label})"
            for arm, jobs in zip(arms, (base, other), strict=True)
        )

    print(f"{machine_line()}; {args.model} model, {args.size}x{args.size}, {args.steps} steps, "
          f"{args.pairs} pairs of warm jobs")  # fmt: skip
    if job_core is not None:
        print(f"- the denoising has core {job_core} to itself; the writer, the proxy and "
              "PostgreSQL run on the others")  # fmt: skip
    print(f"- a job: {at_each(lambda job: job.seconds, lambda s: f'{s * 1000:.0f} ms')}")
    print(f"- its thread off the CPU (waiting): {at_each(lambda job: job.waiting)}")
    print(f"- of which in its own queries: {at_each(lambda job: job.on_database)}")
    print(f"- its thread's context switches: {at_each(lambda job: job.switches, '{:.0f}'.format)}")
    if args.compare == "distance":
        print("- the proxy's own CPU a job: " + ", ".join(
            f"{statistics.median(v) * 1000:.0f} ms at {d:g} ms" for d, v in proxy_cpu.items()
        ))  # fmt: skip
    what = "Progress tracking" if args.compare == "tracking" else "The distance"
    print(f"{what} costs the job (median of the pairs' differences):")
    print(f"- in waiting: {paired(lambda job: job.waiting)}")
    print(f"- in computing: {paired(lambda job: job.computing)}")
    print(f"- end to end: {paired(lambda job: job.seconds)}")


if __name__ == "__main__":
    main()
