"""Limits against abuse: request bodies refused while they stream."""

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import WebServer, wait_for

# Limits are counted and enforced through the database (queued jobs per owner, streams,
# timeouts): CI runs those on both engines; the ones marked any_database involve no engine.
pytestmark = pytest.mark.django_db(transaction=True)

LIMIT_MB = 1


@pytest.fixture
def small_body_server(request, tmp_path):
    server = WebServer(tmp_path, SD_MAX_BODY_MB=LIMIT_MB)
    yield server
    server.stop()


def send_chunked(port: int, path: str, total: int) -> tuple[bytes, int]:
    """POST `total` bytes chunked (no Content-Length), stopping when the server answers:
    (what it answered, how many body bytes went out by then)."""
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n".encode()
        )
        sock.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except BlockingIOError:
                pass
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
        sock.setblocking(True)
        while b"}" not in answer:  # the whole JSON body, not only the headers
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, sent


@pytest.mark.any_database  # the connection's limits: no database engine in it
@pytest.mark.parametrize("path", ["/api/generate", "/anything", "/api/progress/x"])
def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(small_body_server, path):
    answer, sent = send_chunked(small_body_server.port, path, total=50 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"larger than the limit of 1 MB" in answer
    assert sent < 8 * 1024 * 1024  # answered long before the 50 MB were sent


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_a_declared_length_over_the_limit_is_refused_before_reading(small_body_server):
    with socket.create_connection(("127.0.0.1", small_body_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 4000000000\r\nContent-Type: application/json\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_bodies_within_the_limit_pass(small_body_server):
    response = httpx.post(f"{small_body_server.url}/api/generate", json={"prompt": "a"})
    assert response.status_code == 403  # on to Django: the CSRF check, not the size


# --- Login throttle ----------------------------------------------------------------


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_half_sent_headers_and_stalled_bodies_do_not_hold_a_connection(tmp_path):
    server = WebServer(tmp_path, SD_HEADER_TIMEOUT="1", SD_BODY_TIMEOUT="1")
    try:
        # Headers that never end: the server closes the socket (uvicorn alone never would).
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            assert sock.recv(1024) == b""  # closed, not answered
        # A body that stops halfway: a JSON 408, and the connection closes.
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt"'
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"SD_BODY_TIMEOUT" in answer
        # A request sent in time is served as ever.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_nearing_the_file_limit_is_logged(tmp_path):
    server = WebServer(tmp_path, file_limit=128)
    sockets = []
    try:
        wait_for(
            lambda: (
                sockets.append(socket.create_connection(("127.0.0.1", server.port)))
                or "near this process's file limit of 128" in server.log()
            ),
            timeout=30,
            message="the warning",
        )
        assert len(sockets) < 128  # it warned before the process ran out
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        # Near the limit a new connection is answered 503 at once, and the process keeps
        # the descriptors it needs; once the sockets go, it serves again.
        while len(sockets) < 120:
            sockets.append(socket.create_connection(("127.0.0.1", server.port)))
        full = httpx.get(f"{server.url}/healthz")
        assert full.status_code == 503 and "connections open" in full.json()["message"]
        for sock in sockets:
            sock.close()
        wait_for(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, timeout=30)
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_admin_login_locks_out_after_repeated_failures(client, django_user_model, settings):
    django_user_model.objects.create_superuser("boss", "boss@example.com", "right-horse-9")

    def attempt(password):
        return client.post(
            "/admin/login/?next=/admin/",
            {"username": "boss", "password": password},
            REMOTE_ADDR="203.0.113.9",
        )

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt("wrong").status_code == 200  # the form again, with its error
    locked = attempt("wrong")
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert attempt("right-horse-9").status_code == 429  # even the right one, for a while
    # Another address is not locked out with it.
    other = client.post(
        "/admin/login/?next=/admin/",
        {"username": "boss", "password": "right-horse-9"},
        REMOTE_ADDR="198.51.100.7",
    )
    assert other.status_code == 302


# --- Headers and deployment --------------------------------------------------------


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_pages_carry_a_content_security_policy_without_inline_scripts(client):
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert b"<script>" not in response.content  # scripts come from files only


@pytest.mark.any_database  # the connection's limits: no database engine in it
def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT, process_env

    env = process_env(
        DEBUG="0",
        SECRET_KEY="k3Vq9-ZpL2mR8sT1wY6uN4bX0cF5hJ7gD" * 2,
        ALLOWED_HOSTS="sd.example.com",
        CSRF_TRUSTED_ORIGINS="https://sd.example.com",
        SD_BEHIND_HTTPS_PROXY="1",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.any_database  # the mode of SQLite's file: CI's SQLite run checks it
def test_the_database_and_media_are_private_to_the_service_user(make_session):
    import os
    import stat

    from django.conf import settings
    from django.db import connection

    connection.ensure_connection()
    database = connection.settings_dict["NAME"]
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(settings.MEDIA_ROOT).st_mode) == 0o700


# --- Per-owner limits --------------------------------------------------------------


def post_job(client, address="192.0.2.10", HTTP_AUTHORIZATION=None, **extra):
    headers = {"HTTP_AUTHORIZATION": HTTP_AUTHORIZATION} if HTTP_AUTHORIZATION else {}
    return client.post(
        "/api/generate",
        {"prompt": "a red circle", "steps": 2, **extra},
        content_type="application/json",
        REMOTE_ADDR=address,
        **headers,
    )


def test_an_owner_may_hold_at_most_sd_max_queued_per_owner_jobs(client, settings):
    from django.test import Client

    from generator.models import GenerationSession, Status

    settings.SD_MAX_QUEUED_PER_OWNER = 3
    assert post_job(client, count=2).status_code == 202
    too_many = post_job(client, count=2)  # 4 would be too many; 1 more is not
    assert too_many.status_code == 429
    assert "You have 2 jobs queued or running; 2 more would make 4" in too_many.json()["message"]
    assert "ask for at most 1 or wait" in too_many.json()["message"]
    assert post_job(client).status_code == 202
    refused = post_job(client)
    assert refused.status_code == 429 and refused["Retry-After"]
    assert refused.json()["message"] == (
        "You have 3 jobs queued or running and may have at most 3 (SD_MAX_QUEUED_PER_OWNER): "
        "wait for one to finish."
    )
    assert GenerationSession.objects.count() == 3

    # A fresh cookie from the same address does not reset it, and is told whose jobs count...
    fresh = post_job(Client())
    assert fresh.status_code == 429
    assert fresh.json()["message"] == (
        "Your address (192.0.2.10) has 3 jobs queued or running and may have at most 3 "
        "(SD_MAX_QUEUED_PER_OWNER): wait for one to finish."
    )
    # ...and so is the first browser once it has moved to another address.
    moved = post_job(client, address="192.0.2.11")
    assert moved.status_code == 429
    assert moved.json()["message"].startswith("You have 3 jobs queued or running")
    # ...another owner is not slowed at all...
    assert post_job(Client(), address="198.51.100.20").status_code == 202
    # ...and a finished job makes room again.
    one = GenerationSession.objects.filter(client_ip="192.0.2.10").first()
    GenerationSession.objects.filter(pk=one.pk).update(status=Status.COMPLETED)
    assert post_job(client).status_code == 202


def test_the_queue_takes_owners_in_turn_not_strictly_oldest_first(make_session):
    from generator.models import GenerationSession
    from generator.ownership import Viewer
    from generator.services import session_requeue
    from generator.web.serializers import own_queue
    from generator.worker.claims import claim_next

    flood = [make_session(owner_key="flood", client_ip="192.0.2.1") for _ in range(6)]
    first = claim_next("w1")
    assert first.session.pk == flood[0].pk  # running: the flood had its turn
    late = [make_session(owner_key="late", client_ip="192.0.2.2") for _ in range(2)]
    script = make_session()  # queued by a script: an owner of its own

    # The newcomers' places agree with the order the workers take jobs in.
    assert [row["queue_position"] for row in own_queue(Viewer(owner_key="late"))] == [1, 4]
    order = []
    while job := claim_next("w1"):
        order.append(job.session.pk)
        job.fail("taken")  # done: the next claim takes the next turn
    assert order == [
        late[0].pk, script.pk, flood[1].pk, late[1].pk, *[s.pk for s in flood[2:]]
    ]  # fmt: skip

    # A job put back in the queue by hand takes its owner's next turn, as a new one would.
    assert session_requeue([flood[5].pk]) == 1
    again = [make_session(owner_key="late", client_ip="192.0.2.2") for _ in range(2)]
    order = [claim_next("w1").session.pk for _ in range(3)]
    assert order == [again[0].pk, flood[5].pk, again[1].pk]
    assert GenerationSession.objects.pending().count() == 0


def test_the_request_rate_is_limited_per_owner_with_retry_after(client, settings):
    from django.core.cache import cache
    from django.test import Client

    cache.clear()
    settings.SD_RATE_LIMIT = "3/m"
    for _ in range(3):
        assert post_job(client, address="192.0.2.44", prompt="").status_code == 400  # counted
    limited = post_job(client, address="192.0.2.44")
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert "SD_RATE_LIMIT" in limited.json()["message"]
    assert post_job(Client(), address="192.0.2.45").status_code == 202  # someone else


def test_staff_and_unlimited_keys_are_exempt(client, settings, django_user_model):
    from django.test import Client

    from generator.apikeys import issue_key

    settings.SD_MAX_QUEUED_PER_OWNER = 1
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(staff)
    assert [post_job(client).status_code for _ in range(3)] == [202] * 3

    tool = django_user_model.objects.create_user("tool", password="x")
    limited, limited_key = issue_key(tool, name="limited")
    unlimited, unlimited_key = issue_key(tool, name="unlimited")
    unlimited.unlimited = True
    unlimited.save()

    def with_key(key):
        return post_job(Client(), address="203.0.113.5", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert with_key(limited_key).status_code == 202
    assert with_key(limited_key).status_code == 429  # the key's user holds one already
    assert with_key(unlimited_key).status_code == 202


# --- Size and time limits -----------------------------------------------------------


def test_a_size_over_sd_max_pixels_is_a_400_naming_width(client, settings):
    settings.SD_MAX_PIXELS = 512 * 512
    response = post_job(client, width=1024, height=768)
    assert response.status_code == 400
    assert "SD_MAX_PIXELS" in response.json()["errors"]["width"][0]
    assert post_job(client, width=512, height=512).status_code == 202


def test_a_job_over_sd_job_timeout_fails_with_a_readable_reason(make_session, settings):
    from django.core.management import call_command

    from generator.models import GenerationSession, Status

    settings.SD_JOB_TIMEOUT = 0.001  # over by the first step
    session = make_session(steps=20, width=64, height=64)
    call_command("runworker", once=True, verbosity=0)
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert "SD_JOB_TIMEOUT" in session.error and session.current_step <= 1
    settings.SD_JOB_TIMEOUT = 3600
    later = make_session(steps=2, width=64, height=64)
    call_command("runworker", once=True, verbosity=0)  # the worker goes on serving
    assert GenerationSession.objects.get(pk=later.pk).status == Status.COMPLETED


def test_the_watchdog_fails_a_job_whose_step_never_ends_and_restarts(settings):
    import threading
    import time
    from types import SimpleNamespace

    from generator.worker.watchdog import Watchdog

    settings.SD_WATCHDOG_GRACE = 0.05
    failed, restarted = [], threading.Event()
    job = SimpleNamespace(session=SimpleNamespace(pk="s1"), fail=failed.append)
    worker = SimpleNamespace(current_jobs=[job], job_deadline=time.monotonic(), worker_id="w:1")
    watchdog = Watchdog(worker, restart=restarted.set, interval=0.01)
    watchdog.start()
    assert restarted.wait(5)
    assert "SD_JOB_TIMEOUT" in failed[0] and "restarted" in failed[0]


# --- Progress streams ----------------------------------------------------------------


def test_streams_past_the_per_owner_and_process_caps_get_503_with_retry_after(
    tmp_path, make_session
):
    sessions = [make_session() for _ in range(4)]
    server = WebServer(tmp_path, SD_MAX_STREAMS=3, SD_MAX_STREAMS_PER_OWNER=2)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            open_streams = []
            for session in sessions[:2]:
                stream = client.stream("GET", f"/api/progress/{session.pk}")
                response = stream.__enter__()
                assert response.status_code == 200
                lines = response.iter_lines()  # held: a dropped iterator closes the stream
                next(lines)
                open_streams.append((stream, lines))
            refused = client.get(f"/api/progress/{sessions[2].pk}")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
            assert "SD_MAX_STREAMS_PER_OWNER" in refused.json()["message"]
            # Another owner (a browser with its own cookie) may open one more, up to the cap.
            other = httpx.Client(base_url=server.url, timeout=10)
            other.get("/")  # its cookies
            mine = other.post(
                "/api/generate",
                json={"prompt": "mine", "steps": 2},
                headers={"X-CSRFToken": other.cookies.get("csrftoken", "")},
            )
            assert mine.status_code == 202, mine.text
            own_id = mine.json()["session_id"]
            with other.stream("GET", f"/api/progress/{own_id}") as third:
                assert third.status_code == 200
                full = other.get(f"/api/progress/{sessions[3].pk}")
                assert full.status_code == 503
                assert "SD_MAX_STREAMS)" in full.json()["message"]
            other.close()
            for stream, _ in open_streams:
                stream.__exit__(None, None, None)
    finally:
        server.stop()


def test_streams_opening_at_once_cannot_slip_past_the_cap(tmp_path, make_session):
    import asyncio

    session = make_session()
    server = WebServer(tmp_path, SD_MAX_STREAMS_PER_OWNER=5)

    async def open_many(count: int) -> list[bytes]:
        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                f"GET /api/progress/{session.pk} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            status = (await asyncio.wait_for(reader.readline(), 30)).split(b" ")[1]
            return status, writer

        answers = await asyncio.gather(*(one() for _ in range(count)))
        for _, writer in answers:
            writer.close()
        return sorted(status for status, _ in answers)

    try:
        assert asyncio.run(open_many(40)) == [b"200"] * 5 + [b"503"] * 35
    finally:
        server.stop()


# --- Faults --------------------------------------------------------------------------


@pytest.mark.any_database  # it brings its own cluster, whatever the suite runs on
def test_a_worker_rides_out_a_postgresql_restart_mid_job(tmp_path, start_worker):

    from tests.support.processes import PostgresCluster, wait_for

    cluster = PostgresCluster(tmp_path)
    server = worker = None
    try:
        cluster.migrate()
        server = WebServer(tmp_path, DATABASE_URL=cluster.url)
        client = httpx.Client(base_url=server.url, timeout=10)
        client.get("/")
        queued = client.post(
            "/api/generate",
            json={"prompt": "a red circle", "steps": 40, "width": 256, "height": 256},
            headers={"X-CSRFToken": client.cookies["csrftoken"]},
        )
        session_id = queued.json()["session_id"]
        worker = start_worker(DATABASE_URL=cluster.url)

        def session():
            answer = client.get(f"/api/sessions/{session_id}")
            return answer.json() if answer.status_code == 200 else None

        wait_for(lambda: (s := session()) and s["current_step"] >= 2, timeout=120)
        cluster.stop()
        wait_for(lambda: "does not answer" in worker.log(), timeout=60, message="the outage")
        cluster.start()
        done = wait_for(
            lambda: (s := session()) and s["status"] in ("completed", "failed") and s,
            timeout=180,
            interval=0.5,
            message="the job after the restart",
        )
        assert done["status"] == "completed" and done["restarts"] == 0
        assert worker.popen.poll() is None  # still serving
        assert "Traceback" not in worker.log()
        client.close()
    finally:
        if worker:  # done with: not worth a graceful stop against a cluster about to go
            worker.popen.kill()
        if server:
            server.stop()
        cluster.remove()


def test_a_failed_image_write_leaves_no_truncated_file(make_session):
    import os
    import resource

    import numpy as np
    from django.conf import settings
    from PIL import Image

    from generator.worker.claims import claim_next

    session = make_session(width=64, height=64)
    job = claim_next("host:1:disk")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    images = Path(settings.MEDIA_ROOT) / "images"
    before = set(images.rglob("*")) if images.exists() else set()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # a disk that fills at 4 KB
    try:
        with pytest.raises(OSError):
            job.complete(Image.fromarray(noise))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = set(images.rglob("*")) if images.exists() else set()
    assert [p for p in after - before if p.is_file()] == []  # no half-written PNG
    session.refresh_from_db()
    assert session.status == "running" and not session.image  # the worker then fails it
    assert os.path.exists(settings.MEDIA_ROOT)


def test_private_media_serves_an_image_only_to_whoever_may_see_its_session(
    client, settings, django_user_model
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.test import Client

    from generator.models import GenerationSession

    session_id = post_job(client).json()["session_id"]
    name = default_storage.save(f"images/{session_id}.png", ContentFile(b"\x89PNG..."))
    GenerationSession.objects.filter(pk=session_id).update(image=name)
    stranger = Client()
    assert stranger.get(f"/media/{name}").status_code == 200  # open by default

    settings.SD_PRIVATE_MEDIA = True
    assert client.get(f"/media/{name}").status_code == 200  # the owner
    assert stranger.get(f"/media/{name}").status_code == 404
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("s", password="x", is_staff=True))
    assert staff.get(f"/media/{name}").status_code == 200
    assert stranger.get("/media/images/../../secret_key").status_code == 404
