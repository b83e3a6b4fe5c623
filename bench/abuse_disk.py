"""Issue 38's full disks, replayed against real processes on small tmpfs filesystems.

    .venv/bin/python -m bench.abuse_disk        # as root (mounts tmpfs)

Each case starts its own uvicorn process (as the Procfile runs it) and workers, fills a
real filesystem, replays what broke before, and prints what held:

- database disk full (SQLite on a 16 MB tmpfs, filled): a new browser's POST, and the rows
  it left (was: a 500 with the job committed and the browser session not); with the
  rate limit on (was: "The database is busy"); /readyz, a job's `waiting_for` and a
  worker's log once the disk is under its floor (was: ready, "No worker is running").
- media disk full (DATA_DIR on a 4 MB tmpfs, filled): a POST, and a queued job run by a
  worker (was: every step computed, then a failure on saving).
- media over SD_MEDIA_QUOTA_GB: a POST, and a queued job run by a worker.
"""

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._setup import django_on_scratch_data, machine_line
from bench.abuse import wait_until


def scenario(title: str):
    print(f"\n## {title}", flush=True)


def mount_tmpfs(folder: Path, size: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    return folder


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def post(url: str, client: httpx.Client | None = None) -> httpx.Response:
    if client is None:
        client = httpx.Client(base_url=url, timeout=30)
        client.get("/")
    return client.post(
        "/api/generate",
        json={"prompt": "a red circle", "steps": 4},
        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{url}/"},
    )


def answer(response: httpx.Response) -> str:
    body = response.json()
    return f"HTTP {response.status_code} {body.get('message') or body.get('status')!r}"


def count(db: sqlite3.Connection, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def database_disk(tmp: Path) -> None:
    from django.db import connection

    from tests.support.processes import WebServer, WorkerProcess

    scenario("Database disk full (SQLite on a 16 MB tmpfs)")
    folder = mount_tmpfs(tmp / "database-disk", "16m")
    path = folder / "db.sqlite3"
    source = sqlite3.connect(connection.settings_dict["NAME"])
    db = sqlite3.connect(path, isolation_level=None)
    source.backup(db)
    source.close()
    db.execute("PRAGMA journal_mode=WAL")  # held open, as a worker's connection would be
    url = f"sqlite:///{path}"
    processes = []
    try:
        server = WebServer(tmp, DATABASE_URL=url, SD_DB_MIN_FREE_MB=0, SD_RATE_LIMIT="")
        processes.append(server)
        browser = httpx.Client(base_url=server.url, timeout=30)
        browser.get("/")
        first = post(server.url, browser)
        print(f"- a POST while there is room: {answer(first)}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fill(folder)
        jobs, sessions = count(db, "generator_generationsession"), count(db, "django_session")
        refused = post(server.url)
        after = count(db, "generator_generationsession"), count(db, "django_session")
        print(f"- a new browser's POST on the full disk: {answer(refused)} (was a 500)")
        print(
            f"- rows: jobs {jobs} -> {after[0]}, browser sessions {sessions} -> {after[1]} "
            "(was: the job committed and queued, its browser session lost)"
        )
        server.stop()
        server = WebServer(tmp, DATABASE_URL=url, SD_DB_MIN_FREE_MB=0, SD_RATE_LIMIT="30/m")
        processes.append(server)
        print(f"- with SD_RATE_LIMIT on: {answer(post(server.url))} (was: the database is busy)")
        server.stop()
        server = WebServer(tmp, DATABASE_URL=url)  # the default floor, 20 MB
        processes.append(server)
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        print(f"- /readyz: HTTP {ready.status_code} {ready.json()} (was 200, ready)")
        worker = WorkerProcess(tmp, DATABASE_URL=url)
        processes.append(worker)
        said = "The database disk ("
        wait_until(lambda: said in worker.log(), 120, "the worker's log")
        line = next(line for line in worker.log().splitlines() if said in line)
        print(f"- the worker's log: {line.split(' ', 3)[-1]}")
        state = httpx.Client(base_url=server.url, cookies=browser.cookies, timeout=30)
        job = state.get(f"/api/sessions/{first.json()['session_id']}").json()
        print(
            f"- the queued job: {job['status']}, waiting_for {job['waiting_for']!r} "
            "(was 'No worker is running')"
        )
    finally:
        for process in processes:
            process.stop()
        db.close()
        subprocess.run(["umount", "-l", str(folder)], check=False)


def media_disk(tmp: Path) -> None:
    from generator.models import GenerationSession
    from generator.services import session_create
    from tests.support.processes import WebServer

    scenario("Media disk full (DATA_DIR, media/ with it, on a 4 MB tmpfs)")
    folder = mount_tmpfs(tmp / "media-disk", "4m")
    for name in ("media", "static"):
        (folder / name).mkdir()
    (folder / "secret_key").write_text("x" * 50)
    fill(folder)
    processes = []
    try:
        server = WebServer(tmp, DATA_DIR=folder)
        processes.append(server)
        print(f"- a POST: {answer(post(server.url))} (was 202, then a failure on saving)")
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        print(f"- /readyz: HTTP {ready.status_code} {ready.json()}")
        run_refused_job(tmp, processes, session_create, GenerationSession, DATA_DIR=folder)
    finally:
        for process in processes:
            process.stop()
        subprocess.run(["umount", "-l", str(folder)], check=False)


def run_refused_job(tmp, processes, session_create, sessions, **env) -> None:
    from tests.support.processes import WorkerProcess

    session = session_create(prompt="a red circle", steps=20)
    started = time.monotonic()
    worker = WorkerProcess(tmp, "--once", **env)
    processes.append(worker)
    done = wait_until(
        lambda: (s := sessions.objects.get(pk=session.pk)).finished_at and s, 300, "the job"
    )
    print(
        f"- a queued 20-step job: {done.status} after {time.monotonic() - started:.1f} s "
        f"(worker start included), steps run {done.current_step}, attempts {done.attempts}: "
        f"{done.error!r} (was: all 20 steps, then an error on saving)"
    )


def media_quota(tmp: Path) -> None:
    from django.conf import settings

    from generator.models import GenerationSession
    from generator.services import session_create
    from tests.support.processes import WebServer

    scenario("Media over SD_MEDIA_QUOTA_GB (a 4 KB file, a quota of about 1 KB)")
    filler = Path(settings.MEDIA_ROOT) / "images" / "quota-filler.bin"
    filler.parent.mkdir(parents=True, exist_ok=True)
    filler.write_bytes(b"0" * 4096)
    processes = []
    try:
        server = WebServer(tmp, SD_MEDIA_QUOTA_GB="0.000001")
        processes.append(server)
        print(f"- a POST: {answer(post(server.url))}")
        run_refused_job(
            tmp, processes, session_create, GenerationSession, SD_MEDIA_QUOTA_GB="0.000001"
        )
    finally:
        for process in processes:
            process.stop()
        filler.unlink()


def main():
    if os.geteuid() != 0:
        sys.exit("bench.abuse_disk mounts tmpfs filesystems: run it as root")
    django_on_scratch_data()
    tmp = Path(tempfile.mkdtemp(prefix="sdsite-abuse-disk-"))
    print(f"# Full-disk replay\n\n{machine_line()}")
    database_disk(tmp)
    media_disk(tmp)
    media_quota(tmp)


if __name__ == "__main__":
    main()
