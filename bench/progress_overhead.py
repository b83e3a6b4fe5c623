"""What progress tracking costs a fast job when the database is far away.

    bin/with-postgres .venv/bin/python -m bench.progress_overhead [--delay-ms 2] [--pairs 30]

The same warm job (demo model, 64x64, 40 steps: a few ms a step, like a GPU) run by
the worker's own code (claim, step writes through the ProgressWriter, previews,
completion) in one worker process, reaching PostgreSQL through a local TCP proxy
that holds every packet 0 or --delay-ms in each direction. The delay switches
between jobs, in pairs (which of the two goes first alternates), so the machine's
drift from one job to the next (a few %, more than the effect measured) falls on
both alike. Prints the median job time at each delay, and the median of the
pairs' differences as a share of the job.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, quote, unquote, urlparse

from bench._setup import ROOT, machine_line


async def relay(reader, writer, delay) -> None:
    """Copy one direction, each chunk sent `delay.seconds` after it arrived, in order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def send():
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    while data := await reader.read(65536):
        queue.put_nowait((time.monotonic() + delay.seconds, data))
    queue.put_nowait(None)
    await sender


class Delay:
    seconds = 0.0


def start_proxy(socket_path: str, delay: Delay) -> int:
    """A TCP port on 127.0.0.1 forwarding to PostgreSQL's Unix socket, `delay` each way."""
    ready = threading.Event()
    port = []

    async def serve():
        async def handle(client_reader, client_writer):
            server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
            await asyncio.gather(
                relay(client_reader, server_writer, delay),
                relay(server_reader, client_writer, delay),
            )

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait()
    return port[0]


def child() -> None:
    """Run a warm job for each line on stdin; print its seconds."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
    import django

    django.setup()
    import torch

    from generator.services import session_create
    from generator.worker.claims import claim_next
    from generator.worker.loop import Worker

    # One core denoises, as a GPU would; the other is left to the bookkeeping, the
    # database and this benchmark's proxy, which on a saturated 2-core machine would
    # otherwise show up as job time wherever they ran.
    torch.set_num_threads(1)
    worker = Worker(once=True, worker_id="bench")
    for _ in sys.stdin:
        session_create(prompt="a red circle on a blue background", steps=40, width=64, height=64)
        job = claim_next("bench")
        started = time.perf_counter()
        worker.process([job])
        print(time.perf_counter() - started, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--pairs", type=int, default=30, help="pairs of warm jobs")
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
    delay = Delay()
    proxy = start_proxy(f"{socket_dir}/.s.PGSQL.{parsed.port or 5432}", delay)
    relayed = f"postgres://{quote(parsed.username or 'postgres')}@127.0.0.1:{proxy}{parsed.path}"
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.progress_overhead", "--child"],
        cwd=ROOT, env=dict(os.environ, DATABASE_URL=relayed, HF_HUB_OFFLINE="1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip

    proxy_cpu = {}

    def job(delay_ms: float) -> float:
        delay.seconds = delay_ms / 1000
        before = time.process_time()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        seconds = float(worker.stdout.readline())
        proxy_cpu.setdefault(delay_ms, []).append(time.process_time() - before)
        return seconds

    job(0)  # loads the model
    near, away = [], []
    for pair in range(args.pairs):
        if pair % 2:
            away.append(job(args.delay_ms))
            near.append(job(0))
        else:
            near.append(job(0))
            away.append(job(args.delay_ms))
    worker.stdin.close()
    worker.wait()
    if args.show_jobs:
        print("ms a job, no delay:", [round(x * 1000) for x in near])
        print(f"ms a job, {args.delay_ms:g} ms away:", [round(x * 1000) for x in away])
    cost = statistics.median(b - a for a, b in zip(near, away, strict=True))
    print(f"{machine_line()}; demo model, 64x64, 40 steps, {args.pairs} pairs of warm jobs")
    print(f"- PostgreSQL through the proxy, no delay: {statistics.median(near):.3f} s a job")
    print(f"- {args.delay_ms:g} ms each way: {statistics.median(away):.3f} s a job")
    print(
        "- the proxy's own CPU a job: "
        + ", ".join(
            f"{statistics.median(v) * 1000:.0f} ms at {d:g} ms" for d, v in proxy_cpu.items()
        )
    )
    print(
        f"- the distance costs {cost * 1000:+.1f} ms a job (median of the pairs' differences), "
        f"{cost / statistics.median(near):+.1%} of the job"
    )


if __name__ == "__main__":
    main()
