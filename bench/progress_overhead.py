"""What progress tracking costs a fast job when the database is far away.

    bin/with-postgres .venv/bin/python -m bench.progress_overhead [--delay-ms 2] [--jobs 5]

The same warm job (demo model, 64x64, 40 steps: a few ms a step, like a GPU) run by
the worker's own code (claim, step writes through the ProgressWriter, previews,
completion) with PostgreSQL reached directly, and through a local TCP proxy that
holds every packet --delay-ms in each direction, and through the same proxy with no
delay (the relay's own cost, on the same cores). Prints the median job time of each
and what the distance costs, as a share of the job.
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


async def relay(reader, writer, delay: float) -> None:
    """Copy one direction, each chunk sent `delay` seconds after it arrived, in order."""
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
        queue.put_nowait((time.monotonic() + delay, data))
    queue.put_nowait(None)
    await sender


def start_proxy(socket_path: str, delay: float) -> int:
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


def child(jobs: int) -> None:
    """Run `jobs` warm jobs with the worker's code; print the median seconds of a job."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
    import django

    django.setup()
    from generator.services import session_create
    from generator.worker.claims import claim_next
    from generator.worker.loop import Worker

    worker = Worker(once=True, worker_id="bench")
    seconds = []
    for n in range(jobs + 1):
        session_create(prompt="a red circle on a blue background", steps=40, width=64, height=64)
        job = claim_next("bench")
        started = time.perf_counter()
        worker.process([job])
        if n:  # the first loads the model
            seconds.append(time.perf_counter() - started)
    print(statistics.median(seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.jobs)
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("Run it under bin/with-postgres: it needs a PostgreSQL DATABASE_URL.")
    parsed = urlparse(url)
    host = unquote(parsed.netloc.rsplit("@", 1)[-1])  # bin/with-postgres: the socket folder
    socket_dir = parse_qs(parsed.query).get("host", [host])[0]
    if not socket_dir.startswith("/"):
        raise SystemExit("The proxy forwards to PostgreSQL's Unix socket (bin/with-postgres).")
    port = parsed.port or 5432
    socket_path = f"{socket_dir}/.s.PGSQL.{port}"

    def through_proxy(delay_ms: float) -> str:
        proxy = start_proxy(socket_path, delay_ms / 1000)
        return f"postgres://{quote(parsed.username or 'postgres')}@127.0.0.1:{proxy}{parsed.path}"

    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip

    def run(database_url: str) -> float:
        env = dict(os.environ, DATABASE_URL=database_url, HF_HUB_OFFLINE="1")
        out = subprocess.run(
            [sys.executable, "-m", "bench.progress_overhead", "--child", "--jobs", str(args.jobs)],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])

    # The proxy itself (a Python relay on this machine's cores) costs something; the
    # same proxy with no delay tells it apart from the distance.
    near, relayed, away = run(url), run(through_proxy(0)), run(through_proxy(args.delay_ms))
    print(f"{machine_line()}; demo model, 64x64, 40 steps, median of {args.jobs} warm jobs")
    print(f"- PostgreSQL direct: {near:.3f} s a job")
    print(f"- through the proxy, no delay: {relayed:.3f} s a job")
    print(f"- through the proxy, {args.delay_ms:g} ms each way: {away:.3f} s a job")
    print(
        f"- the distance costs {away - relayed:+.3f} s, {(away - relayed) / relayed:+.1%} of the "
        f"job (against direct: {(away - near) / near:+.1%})"
    )


if __name__ == "__main__":
    main()
