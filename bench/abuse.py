"""The attacks and faults of the hardening review, replayed against real processes.

    .venv/bin/python -m bench.abuse                 # flood, big body, sockets, SQLite lock
    .venv/bin/python -m bench.abuse --postgres      # + a PostgreSQL restart and an outage

Each scenario starts its own uvicorn process (as the Procfile runs it, default
limits) and workers, replays what broke before, and prints what held:

- flood: one anonymous browser posts as fast as it can for --flood-seconds, with
  its cookie and with a fresh cookie each time; then another owner queues one job
  and we read its place in the queue.
- big body: a chunked POST (no Content-Length, no cookie) of up to --body-mb;
  how much the server read before it answered.
- sockets, at `ulimit -n 1024`: 2000 progress streams, and 1050 idle sockets that
  never send a header; whether /healthz answers meanwhile, and what the log says.
- SQLite lock: another writer holds the database for --lock-seconds while two
  workers run a job; a POST meanwhile, and whether the job is re-run.
- PostgreSQL (--postgres): a 1 s restart mid-job, then an --outage-seconds outage
  with two workers: whether the job and the workers survive.

Then this round's reviews, each a module of its own run as a child process (each
also runs alone as `python -m bench.abuse_<name>`):

- parsers (bench.abuse_parsers): hostile PNG text chunks against the PNG-info routes,
  and /healthz meanwhile;
- proxy (bench.abuse_proxy): through a real nginx, two visitors' caps, a forged
  X-Forwarded-For flood, /metrics from outside, malformed headers;
- resources (bench.abuse_resources): a crowd of streams and a thousand slow sockets at
  `ulimit -n 1024`;
- disk (bench.abuse_disk, as root): the database disk, the media disk and the quota full.
"""

import argparse
import asyncio
import select
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench._setup import django_on_scratch_data, machine_line


def scenario(title: str):
    print(f"\n## {title}", flush=True)


def csrf_client(url: str) -> tuple[httpx.Client, dict]:
    client = httpx.Client(base_url=url, timeout=30)
    client.get("/")
    return client, {"X-CSRFToken": client.cookies["csrftoken"]}


def flood(tmp: Path, seconds: float) -> None:
    from generator.apikeys import issue_key, user_for
    from generator.models import GenerationSession
    from tests.support.processes import WebServer

    scenario(f"Flood: one anonymous browser for {seconds:g} s (default limits, no worker)")
    server = WebServer(tmp)
    try:
        answers: dict[int, int] = {}
        client, headers = csrf_client(server.url)
        fresh = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if fresh % 2:  # every other request with a new cookie, as a flooder would
                client, headers = csrf_client(server.url)
            fresh += 1
            status = client.post("/api/generate", json={"prompt": "x"}, headers=headers)
            answers[status.status_code] = answers.get(status.status_code, 0) + 1
        queued = GenerationSession.objects.count()
        print(f"- {sum(answers.values())} requests: {dict(sorted(answers.items()))}")
        print(f"- sessions queued by the flood: {queued} (was 1,753 in a minute)")
        _, key = issue_key(user_for("someone-else"))
        response = httpx.post(
            f"{server.url}/api/generate",
            json={"prompt": "mine"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        mine = GenerationSession.objects.with_queue_place().get(pk=response.json()["session_id"])
        print(
            f"- another owner's job: HTTP {response.status_code}, "
            f"place {mine.queue_ahead + 1} of {queued + 1} (was 2,130)"
        )
    finally:
        server.stop()


def big_body(tmp: Path, megabytes: int) -> None:
    from tests.support.processes import WebServer

    scenario(f"Big body: a chunked POST of up to {megabytes} MB, no cookie")
    server = WebServer(tmp)
    chunk = b"x" * 65536
    sent, answer = 0, b""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            )
            while sent < megabytes * 1024 * 1024 and not answer:
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(4096) or b"(closed)"
                    break
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    answer = sock.recv(4096)
        status = answer.split(b"\r\n", 1)[0].decode() or "no answer"
        print(
            f"- answered `{status}` after {sent / 1024 / 1024:.1f} MB sent, "
            f"{time.monotonic() - started:.2f} s (was: all 4 GB spooled to /tmp, 43 s)"
        )
    finally:
        server.stop()


async def streams_held(url: str, port: int, path: str, count: int) -> tuple[dict, float, str]:
    """Open `count` progress streams and, while they are open, ask /healthz.
    ({status: count}, seconds to open them all, the health answer)."""
    started = time.monotonic()
    statuses, writers = await open_streams(port, path, count)
    opened = time.monotonic() - started
    answer = await asyncio.to_thread(health, url)
    for writer in writers:
        writer.close()
    return statuses, opened, answer


async def open_streams(port: int, path: str, count: int) -> tuple[dict, list]:
    """Open `count` progress streams; keep them open. ({status: count}, writers)."""
    statuses: dict[str, int] = {}
    writers = []

    async def one():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), 30)
            status = line.split(b" ")[1].decode() if line else "closed"
            writers.append(writer)
        except (TimeoutError, OSError) as exc:
            status = type(exc).__name__
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one() for _ in range(count)))
    return statuses, writers


def health(url: str) -> str:
    try:
        return str(httpx.get(f"{url}/healthz", timeout=5).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def sockets(tmp: Path) -> None:
    import resource

    from generator.services import session_create
    from tests.support.processes import WebServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))  # our side
    session = session_create(prompt="watched")
    path = f"/api/progress/{session.pk}"

    scenario("2000 progress streams from one address, server at ulimit -n 1024 (defaults)")
    server = WebServer(tmp, file_limit=1024)
    try:
        statuses, seconds, answer = asyncio.run(streams_held(server.url, server.port, path, 2000))
        print(f"- answers: {statuses} in {seconds:.1f} s")
        print(f"- /healthz meanwhile: {answer} (was: the server offline)")
    finally:
        server.stop()

    scenario("2000 streams, per-owner cap off, SD_MAX_STREAMS=900, ulimit -n 1024")
    server = WebServer(tmp, file_limit=1024, SD_MAX_STREAMS=900, SD_MAX_STREAMS_PER_OWNER=10**6)
    try:
        statuses, seconds, answer = asyncio.run(streams_held(server.url, server.port, path, 2000))
        print(f"- answers: {statuses} in {seconds:.1f} s (was 9 s to a first byte)")
        print(f"- /healthz meanwhile: {answer}")
        warned = "near this process's file limit" in server.log()
        print(f"- the log warned of the file limit: {warned}")
    finally:
        server.stop()

    scenario("1050 idle sockets that never send a header, ulimit -n 1024, SD_HEADER_TIMEOUT=5")
    server = WebServer(tmp, file_limit=1024, SD_HEADER_TIMEOUT=5)
    idle = []
    try:
        for _ in range(1050):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        started = time.monotonic()
        answered = "no"
        while time.monotonic() - started < 60:
            if health(server.url) == "200":
                answered = f"yes, {time.monotonic() - started:.1f} s after the last socket opened"
                break
        closed = sum(1 for s in idle if closed_by_peer(s))
        print(f"- /healthz answers while the sockets stay open: {answered} (was: never)")
        print(f"- idle sockets the server closed: {closed} of {len(idle)}")
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def sqlite_lock(tmp: Path, seconds: float) -> None:
    from django.db import connection

    from generator.models import GenerationSession
    from generator.services import session_create
    from tests.support.processes import WebServer, WorkerProcess

    scenario(f"SQLite held by another writer for {seconds:g} s, two workers, one running a job")
    server = WebServer(tmp)
    workers = [WorkerProcess(tmp, SD_WORKER_LEASE=10) for _ in range(2)]
    session = session_create(prompt="a red circle", steps=150, width=128, height=128)
    try:
        wait_until(
            lambda: GenerationSession.objects.get(pk=session.pk).current_step >= 2, 120, "a step"
        )
        holder = sqlite3.connect(
            connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
        )
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(seconds, holder.execute, ["ROLLBACK"]).start()
        client, headers = csrf_client(server.url)
        started = time.monotonic()
        answer = client.post(
            "/api/generate", json={"prompt": "x"}, headers=headers, timeout=seconds + 60
        )
        print(
            f"- a POST meanwhile: HTTP {answer.status_code} after "
            f"{time.monotonic() - started:.1f} s, Retry-After {answer.headers.get('retry-after')}"
            " (was a 500 after 30 s)"
        )
        done = wait_until(
            lambda: (s := GenerationSession.objects.get(pk=session.pk)).finished_at and s,
            seconds + 600,
            "the job",
        )
        holder.close()
        print(f"- the job: {done.status}, restarts {done.restarts} (was: declared lost and re-run)")
        alive = sum(worker.popen.poll() is None for worker in workers)
        print(f"- workers still running: {alive} of 2")
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def postgres(tmp: Path, cluster, outage: float) -> None:
    from generator.db import until_database_answers
    from generator.models import GenerationSession
    from generator.services import session_create
    from tests.support.processes import WorkerProcess

    def row(pk):  # this process rides out the outages too
        return until_database_answers(GenerationSession.objects.get, pk=pk)

    scenario("PostgreSQL restarted (1 s) while a worker is mid-job")
    workers = [WorkerProcess(tmp, SD_WORKER_LEASE=10) for _ in range(2)]
    try:
        session = session_create(prompt="a red circle", steps=150, width=128, height=128)

        wait_until(lambda: row(session.pk).current_step >= 2, 120, "a step")
        cluster.stop()
        time.sleep(1)
        cluster.start()
        done = wait_until(lambda: (s := row(session.pk)).finished_at and s, 600, "the job")
        alive = sum(worker.popen.poll() is None for worker in workers)
        print(f"- the job: {done.status}, restarts {done.restarts}; workers alive: {alive} of 2")

        scenario(f"PostgreSQL away for {outage:g} s with two idle workers")
        cluster.stop()
        time.sleep(outage)
        cluster.start()
        after = until_database_answers(
            session_create, prompt="after the outage", steps=4, width=64, height=64
        )
        done = wait_until(lambda: (s := row(after.pk)).finished_at and s, 300, "the job after")
        alive = sum(worker.popen.poll() is None for worker in workers)
        print(
            f"- workers alive after it: {alive} of 2 (was 0); a job queued after it: {done.status}"
        )
    finally:
        for worker in workers:
            worker.stop()


REVIEWS = ("parsers", "proxy", "resources", "disk")
"""This round's replays, each bench.abuse_<name>, run after the scenarios above."""


def review(name: str) -> None:
    """Run bench.abuse_<name> as a child: its own Django, data and servers; its report inline."""
    scenario(f"{name} (bench.abuse_{name})")
    done = subprocess.run([sys.executable, "-m", f"bench.abuse_{name}"], check=False)
    if done.returncode:
        print(f"- bench.abuse_{name} exited with {done.returncode}")


def main():
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=10)
    parser.add_argument("--body-mb", type=int, default=1024)
    parser.add_argument("--lock-seconds", type=float, default=40)
    parser.add_argument("--outage-seconds", type=float, default=30)
    parser.add_argument("--postgres", action="store_true", help="a throwaway cluster of its own")
    parser.add_argument(
        "--only", nargs="*", help="flood body sockets lock postgres " + " ".join(REVIEWS)
    )
    args = parser.parse_args()
    only = set(args.only or ["flood", "body", "sockets", "lock", "postgres", *REVIEWS])

    cluster = None
    if args.postgres:
        from tests.support.processes import PostgresCluster

        cluster = PostgresCluster(Path(tempfile.mkdtemp()))
        os.environ["DATABASE_URL"] = cluster.url
    django_on_scratch_data()
    tmp = Path(tempfile.mkdtemp(prefix="sdsite-abuse-"))
    print(f"# Abuse replay\n\n{machine_line()}")
    try:
        from django.db import connection

        if "flood" in only:
            flood(tmp, args.flood_seconds)
        if "body" in only:
            big_body(tmp, args.body_mb)
        if "sockets" in only:
            sockets(tmp)
        if "lock" in only and connection.vendor == "sqlite":
            sqlite_lock(tmp, args.lock_seconds)
        if "postgres" in only and cluster is not None:
            postgres(tmp, cluster, args.outage_seconds)
        for name in REVIEWS:
            if name in only:
                review(name)
    finally:
        if cluster is not None:
            cluster.remove()


if __name__ == "__main__":
    main()
