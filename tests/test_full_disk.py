"""A full disk, for real: small tmpfs filesystems filled up, under a real web server and worker.

The database disk (SQLite in its own tmpfs) and the media disk (DATA_DIR in its own tmpfs)
each fill up; the free-space floors (SD_DB_MIN_FREE_MB, SD_MEDIA_MIN_FREE_MB) are set to 0
where a test needs the write itself to fail, and above what is free where it needs the
early refusal. Mounting needs root (CI runs as root): elsewhere these tests skip.
"""

import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connection

from generator.models import GenerationSession, Status
from tests.support.processes import WebServer, wait_for


def mount_tmpfs(folder: Path, size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    return folder


def fill(folder: Path) -> None:
    """Write a file until the disk has no room left."""
    chunk = b"\0" * 65536
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk[:size])
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size): a tmpfs of that size under tmp_path, unmounted at the end."""
    mounted = []

    def mount(name: str, size: str = "16m") -> Path:
        folder = mount_tmpfs(tmp_path / name, size)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def database_disk(tmpfs, transactional_db):
    """A copy of the migrated test database on a tmpfs of its own, in WAL mode, with a
    connection held open (as a worker's would be) so its -wal and -shm files stay."""
    if connection.vendor != "sqlite":
        pytest.skip("the database disk that sdsite watches is SQLite's (PostgreSQL's is its own)")
    folder = tmpfs("database-disk")
    path = folder / "db.sqlite3"
    connection.ensure_connection()
    source = sqlite3.connect(connection.settings_dict["NAME"])
    target = sqlite3.connect(path, isolation_level=None)
    source.backup(target)
    source.close()
    target.execute("PRAGMA journal_mode=WAL")
    yield path, target
    target.close()


def rows(db: sqlite3.Connection, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def new_browser(server) -> httpx.Client:
    """A browser that opened the page (its CSRF cookie), without a session yet."""
    client = httpx.Client(base_url=server.url, timeout=30)
    client.get("/")
    return client


def post(server, client=None, **body):
    client = client or new_browser(server)
    return client.post(
        "/api/generate",
        json={"prompt": "a red circle", "steps": 2, **body},
        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{server.url}/"},
    )


@pytest.fixture
def servers(request, tmp_path):
    started = []

    def start(**env):
        server = WebServer(tmp_path, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    if getattr(request.node, "call_failed", False):
        for server in started:
            sys.stdout.write(f"--- {server.log_path.name}\n{server.log()[-3000:]}\n")


def full_database(database_disk, servers, **env):
    """A web server on the database disk, with one job queued while there was room, then the
    disk filled (the WAL emptied first, so every new write needs new room)."""
    path, db = database_disk
    server = servers(DATABASE_URL=f"sqlite:///{path}", SD_DB_MIN_FREE_MB=0, **env)
    browser = new_browser(server)
    assert post(server, browser).status_code == 202
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill(path.parent)
    return server, browser, db


def test_a_post_on_a_full_database_disk_answers_507_and_leaves_no_job_and_no_session(
    database_disk, servers
):
    server, _, db = full_database(database_disk, servers)
    jobs, sessions = rows(db, "generator_generationsession"), rows(db, "django_session")

    refused = post(server)  # a new browser: its session would be saved with its job

    assert refused.status_code == 507
    assert refused.json()["message"] == (
        "The database disk is full: new jobs are refused until an operator frees space."
    )
    assert str(database_disk[0].parent) not in refused.text
    assert rows(db, "generator_generationsession") == jobs == 1
    assert rows(db, "django_session") == sessions
    assert "The database disk (" in server.log()  # the operator's log names the path


def test_the_rate_limit_on_a_full_database_disk_says_the_disk_is_full_not_busy(
    database_disk, servers
):
    server, browser, db = full_database(database_disk, servers, SD_RATE_LIMIT="30/m")

    refused = post(server, browser)

    assert refused.status_code == 507, refused.text
    assert refused.json()["message"].startswith("The database disk is full:")
    assert rows(db, "generator_generationsession") == 1


def test_a_database_disk_under_its_floor_is_not_ready_and_jobs_say_why_they_wait(
    database_disk, servers, start_worker
):
    path, db = database_disk
    server, browser, _ = full_database(database_disk, servers)
    # The same disk, now with a floor of 1 MB: under it, everything says the disk is full.
    server.stop()
    server = servers(DATABASE_URL=f"sqlite:///{path}", SD_DB_MIN_FREE_MB=1)
    worker = start_worker(DATABASE_URL=f"sqlite:///{path}", SD_DB_MIN_FREE_MB=1)
    session_id = uuid.UUID(db.execute("SELECT id FROM generator_generationsession").fetchone()[0])

    ready = httpx.get(f"{server.url}/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith(f"The database disk ({path.parent}) is full: 0.0 MB")
    said = f"The database disk ({path.parent}) is full"
    wait_for(lambda: said in worker.log(), timeout=120, message="the worker's log")
    assert "does not answer" not in worker.log()
    state = httpx.Client(base_url=server.url, cookies=browser.cookies, timeout=30)
    waiting = state.get(f"/api/sessions/{session_id}").json()
    assert waiting["status"] == "pending"
    assert waiting["waiting_for"] == (
        "The database disk is full: jobs wait until an operator frees space."
    )
    assert post(server).json()["message"].startswith("The database disk is full:")


@pytest.fixture
def media_disk(tmpfs):
    """DATA_DIR on a tmpfs of its own (media/ with it), filled up; the database stays."""
    folder = tmpfs("media-disk", "4m")
    for name in ("media", "static"):
        (folder / name).mkdir()
    (folder / "secret_key").write_text("x" * 50)
    fill(folder)
    return folder


def test_a_post_while_the_media_disk_is_full_answers_507_naming_the_media_disk(
    media_disk, servers, transactional_db
):
    server = servers(DATA_DIR=media_disk)

    refused = post(server)

    assert refused.status_code == 507
    assert refused.json()["message"] == (
        "The media disk is full: new jobs are refused until an operator frees space."
    )
    assert not GenerationSession.objects.exists()
    ready = httpx.get(f"{server.url}/readyz", timeout=30)
    assert ready.status_code == 503 and str(media_disk) in ready.json()["reason"]


def test_a_worker_fails_a_job_before_its_first_step_while_the_media_disk_is_full(
    media_disk, make_session, start_worker
):
    session = make_session(steps=3)
    start_worker("--once", DATA_DIR=media_disk)

    wait_for(
        lambda: GenerationSession.objects.get(pk=session.pk).is_finished, timeout=120,
        message="the refused job",
    )  # fmt: skip
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert session.error == (
        "The media disk is full: the job was not started (nothing was computed); try again later."
    )
    assert session.current_step == 0 and session.attempts == 0


@pytest.mark.any_database
def test_a_worker_fails_a_job_before_its_first_step_while_media_is_over_its_quota(
    make_session, start_worker, settings
):
    filler = Path(settings.MEDIA_ROOT) / "images" / "quota-filler.bin"
    filler.parent.mkdir(parents=True, exist_ok=True)
    filler.write_bytes(b"0" * 4096)
    session = make_session(steps=3)
    try:
        start_worker("--once", SD_MEDIA_QUOTA_GB="0.000001")  # about a kilobyte
        wait_for(
            lambda: GenerationSession.objects.get(pk=session.pk).is_finished, timeout=120,
            message="the refused job",
        )  # fmt: skip
    finally:
        filler.unlink()
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert session.error.startswith("The server's image storage is full (")
    assert session.error.endswith(
        "the job was not started (nothing was computed); try again later."
    )
    assert session.current_step == 0 and session.attempts == 0


@pytest.mark.any_database
def test_readyz_names_the_full_disks_path_only_to_the_probes_networks(client, settings, db):
    settings.SD_MEDIA_MIN_FREE_MB = 1e12  # more than any disk has free

    from_probe = client.get("/readyz", REMOTE_ADDR="127.0.0.1")
    from_elsewhere = client.get("/readyz", REMOTE_ADDR="192.0.2.7")

    assert from_probe.status_code == from_elsewhere.status_code == 503
    assert from_probe.json()["reason"].startswith(f"The media disk ({settings.MEDIA_ROOT}) is full")
    assert from_elsewhere.json() == {
        "ready": False,
        "reason": "The media disk is full: new jobs are refused until an operator frees space.",
    }


@pytest.mark.any_database
def test_the_ops_snapshot_names_a_full_disk_with_its_path(db, settings):
    from generator.web import operations

    assert operations.snapshot()["disk_problem"] is None
    settings.SD_MEDIA_MIN_FREE_MB = 1e12

    assert operations.snapshot()["disk_problem"].startswith(
        f"The media disk ({settings.MEDIA_ROOT}) is full: "
    )
