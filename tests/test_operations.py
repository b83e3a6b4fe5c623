"""Running sdsite as a service: metrics, readiness on a stopped PostgreSQL, retention, the
media quota, webhooks to a real HTTP receiver, the /ops page and JSON logs."""

import hashlib
import hmac
import io
import json
import logging
import os
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from generator import disk, webhooks
from generator.logs import ContextFilter, JsonFormatter, job, set_worker
from generator.models import GenerationSession, Status
from generator.web import operations
from generator.worker.chores import Chores
from generator.worker.heartbeat import register_worker
from tests.support.processes import PostgresCluster, WebServer, wait_for

# Metrics, pruning, quotas, webhooks and the ops page read and write the queue's rows: CI
# runs them on both engines (the readiness test brings its own PostgreSQL: SQLite only).
pytestmark = pytest.mark.django_db(transaction=True)


def finished(make_session, status=Status.COMPLETED, age=timedelta(0), files=(), **params):
    """A session that ended `age` ago, holding `files` ({field: bytes})."""
    session = make_session(**params)
    now = timezone.now() - age
    changes = {
        "status": status,
        "created_at": now - timedelta(seconds=12),
        "started_at": now - timedelta(seconds=10),
        "finished_at": now,
        "step_seconds": [0.2, 0.3, 0.4, 0.5],
    }
    for field, data in dict(files).items():
        changes[field] = default_storage.save(f"{field}s/{session.pk}.png", ContentFile(data))
    GenerationSession.objects.filter(pk=session.pk).update(**changes)
    session.refresh_from_db()
    return session


# --- Metrics -------------------------------------------------------------------


def scrape(client, address="127.0.0.1"):
    response = client.get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Samples(samples)


class Samples(dict):
    def __getitem__(self, key):
        name, labels = key
        return super().__getitem__((name, tuple(sorted(labels))))


@pytest.fixture
def fresh_histograms(monkeypatch):
    monkeypatch.setattr(operations, "finished_jobs", operations.FinishedJobs())


def test_metrics_count_sessions_workers_and_finished_jobs(client, make_session, fresh_histograms):
    make_session()  # pending
    for _ in range(2):
        finished(make_session, width=64, height=64)
    finished(make_session, status=Status.FAILED)
    register_worker("host:1:abc", {})

    samples = scrape(client)
    assert samples[("sdsite_sessions", (("status", "pending"),))] == 1
    assert samples[("sdsite_sessions", (("status", "completed"),))] == 2
    assert samples[("sdsite_sessions", (("status", "failed"),))] == 1
    assert samples[("sdsite_sessions", (("status", "running"),))] == 0
    assert samples[("sdsite_workers_alive", ())] == 1
    assert samples[("sdsite_workers_unhealthy", ())] == 0
    job = (("backend", "pytorch"), ("model", "demo"))
    assert samples[("sdsite_job_seconds_count", job)] == 2
    assert samples[("sdsite_job_seconds_sum", job)] == pytest.approx(20.0)
    assert samples[("sdsite_job_seconds_bucket", (*job, ("le", "5.0")))] == 0
    assert samples[("sdsite_job_seconds_bucket", (*job, ("le", "10.0")))] == 2
    step = (("backend", "pytorch"), ("model", "demo"), ("size", "64x64"))
    assert samples[("sdsite_step_seconds_count", step)] == 8
    assert samples[("sdsite_step_seconds_bucket", (*step, ("le", "0.25")))] == 2
    assert samples[("sdsite_queue_wait_seconds_count", ())] == 2
    assert ("sdsite_progress_streams", ()) in samples
    # Every metric the Grafana dashboard plots is one that /metrics serves.
    dashboard = (Path(settings.BASE_DIR) / "docs" / "grafana-dashboard.json").read_text()
    served = {name for name, _ in samples}
    plotted = set(re.findall(r"sdsite_[a-z_]+", dashboard))
    assert plotted and plotted <= served

    # Histograms only grow: one more finished job, and the next scrape counts it once.
    finished(make_session, width=64, height=64)
    again = scrape(client)
    assert again[("sdsite_job_seconds_count", job)] == 3
    assert again[("sdsite_step_seconds_count", step)] == 12


def test_metrics_answer_only_the_allowed_networks(client, settings):
    refused = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert refused.status_code == 403
    assert "SD_METRICS_ALLOWED" in refused.json()["message"]
    settings.SD_METRICS_ALLOWED = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_a_progress_stream_shows_in_the_metrics_of_its_process(web_server, make_session):
    session = make_session()
    with httpx.stream("GET", f"{web_server.url}/api/progress/{session.pk}", timeout=10) as stream:
        lines = stream.iter_lines()  # held: a dropped iterator closes the stream
        next(lines)

        def streams():
            text = httpx.get(f"{web_server.url}/metrics").text
            return "sdsite_progress_streams 1.0" in text and text

        text = wait_for(streams, timeout=10, message="the stream in the metrics")
        assert "sdsite_hub_tick_seconds_count" in text


# --- Health ----------------------------------------------------------------------


@pytest.mark.any_database  # it brings its own cluster, whatever the suite runs on
def test_readiness_goes_503_while_postgresql_is_stopped_and_back_when_it_returns(tmp_path):
    cluster = PostgresCluster(tmp_path)
    server = None
    try:
        cluster.migrate()
        server = WebServer(tmp_path, DATABASE_URL=cluster.url)
        assert httpx.get(f"{server.url}/readyz").json() == {"ready": True}
        cluster.stop()
        started = time.monotonic()
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and "database" in ready.json()["reason"]
        assert time.monotonic() - started < 5  # the probe does not hang on the pool
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        cluster.start()
        wait_for(
            lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200,
            timeout=40,
            interval=0.5,
            message="readiness after PostgreSQL restarted",
        )
    finally:
        if server:
            server.stop()
        cluster.remove()


# --- Retention -------------------------------------------------------------------


def media(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


def test_prune_deletes_old_sessions_with_their_files(make_session):
    old = finished(make_session, age=timedelta(days=40), files={"image": b"x" * 1000})
    old_failed = finished(make_session, status=Status.FAILED, age=timedelta(days=40))
    young = finished(make_session, age=timedelta(days=2), files={"image": b"y" * 10})
    queued = make_session()
    GenerationSession.objects.filter(pk=queued.pk).update(
        created_at=timezone.now() - timedelta(days=90)
    )

    out = io.StringIO()
    call_command("prune", "--older-than", "30d", "--dry-run", stdout=out)
    assert "Would delete 2 sessions, 1000" in out.getvalue()
    assert GenerationSession.objects.count() == 4 and media(old.image.name).exists()

    out = io.StringIO()
    call_command("prune", "--older-than", "30d", "--status", "failed", stdout=out)
    assert "Deleted 1 sessions" in out.getvalue()
    assert not GenerationSession.objects.filter(pk=old_failed.pk).exists()

    call_command("prune", "--older-than", "30d", stdout=io.StringIO())
    remaining = set(GenerationSession.objects.values_list("pk", flat=True))
    assert remaining == {young.pk, queued.pk}  # never a queued or running one
    assert not media(old.image.name).exists()
    assert media(young.image.name).exists()


def test_prune_orphans_removes_only_old_files_no_row_names(make_session):
    kept = finished(make_session, files={"image": b"kept"})
    orphan = media("images/orphan.png")
    young_orphan = media("previews/just-written.jpg")
    for path in (orphan, young_orphan):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a crash")
    hours_ago = time.time() - 2 * 3600
    os.utime(orphan, (hours_ago, hours_ago))
    os.utime(media(kept.image.name), (hours_ago, hours_ago))

    out = io.StringIO()
    call_command("prune", "--orphans", stdout=out)
    assert "Deleted 1 orphaned files" in out.getvalue()
    assert not orphan.exists()
    assert young_orphan.exists() and media(kept.image.name).exists()
    young_orphan.unlink()


def test_the_worker_prunes_hourly_when_sd_keep_days_is_set(make_session, settings):
    old = finished(make_session, age=timedelta(days=10))
    settings.SD_KEEP_DAYS = 7
    chores = Chores()
    chores._next_prune = 0
    chores.once()
    assert not GenerationSession.objects.filter(pk=old.pk).exists()


def test_new_jobs_are_refused_with_507_when_media_is_over_quota(client, settings):
    settings.SD_MEDIA_QUOTA_GB = 1e-9  # about one byte
    path = media("images/quota-filler.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0123456789")
    disk.forget_media_usage()
    try:
        response = client.post(
            "/api/generate", {"prompt": "a cat"}, content_type="application/json"
        )
        assert response.status_code == 507
        assert "storage is full" in response.json()["message"]
        assert not GenerationSession.objects.exists()
    finally:
        path.unlink()
        disk.forget_media_usage()


# --- Webhooks --------------------------------------------------------------------


class Receiver:
    """A real HTTP server that records each POST and answers the statuses it is given."""

    def __init__(self, statuses=(200,)):
        self.requests = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.SD_WEBHOOK_HOSTS = ["127.0.0.1"]
    settings.SD_WEBHOOK_SECRET = "s3cret"
    settings.SD_WEBHOOK_ATTEMPTS = 3
    server = Receiver(statuses=(500, 200))
    yield server
    server.close()


def queue_with_callback(client, url, **extra):
    return client.post(
        "/api/generate",
        {"prompt": "a red circle", "steps": 2, "callback_url": url, **extra},
        content_type="application/json",
    )


def test_a_webhook_is_signed_and_retried_after_a_500(client, receiver):
    response = queue_with_callback(client, receiver.url)
    assert response.status_code == 202, response.content
    session_id = response.json()["session_id"]
    assert webhooks.deliver_due() == 0  # not ended yet: nothing to send
    GenerationSession.objects.filter(pk=session_id).update(
        status=Status.COMPLETED, finished_at=timezone.now()
    )

    assert webhooks.deliver_due() == 0  # the receiver answers 500
    session = GenerationSession.objects.get(pk=session_id)
    assert session.webhook_attempts == 1 and "HTTP 500" in session.webhook_error
    assert session.webhook_next_at > timezone.now()  # backing off
    assert webhooks.deliver_due() == 0  # not due yet
    GenerationSession.objects.filter(pk=session_id).update(webhook_next_at=timezone.now())
    assert webhooks.deliver_due() == 1

    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Sdsite-Signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert payload["session_id"] == session_id and payload["status"] == "completed"
    assert payload["parameters"]["prompt"] == "a red circle"
    assert set(payload) == {
        "session_id", "status", "image_url", "error", "parameters", "finished_at"
    }  # fmt: skip
    assert GenerationSession.objects.get(pk=session_id).webhook_delivered_at is not None
    assert webhooks.deliver_due() == 0  # delivered once only


def test_a_webhook_gives_up_after_sd_webhook_attempts(client, receiver):
    receiver.statuses = [500] * 10
    session_id = queue_with_callback(client, receiver.url).json()["session_id"]
    GenerationSession.objects.filter(pk=session_id).update(
        status=Status.FAILED, error="boom", finished_at=timezone.now()
    )
    for _ in range(5):
        webhooks.deliver_due()
        GenerationSession.objects.filter(pk=session_id).update(webhook_next_at=timezone.now())
    assert len(receiver.requests) == 3
    assert json.loads(receiver.requests[0][1])["error"] == "boom"


@pytest.mark.parametrize(
    ("hosts", "url", "says"),
    [
        ([], "http://127.0.0.1:9/hook", "Webhooks are off"),
        (["127.0.0.1"], "http://example.com/hook", "not one"),
        (["localhost"], "http://localhost:9/hook", "loopback"),
        (["127.0.0.1"], "ftp://127.0.0.1/hook", "http"),
        (["10.0.0.0/8"], "http://169.254.169.254/latest/meta-data", "not one"),
    ],
)
def test_a_callback_url_outside_the_allowed_hosts_is_a_400(client, settings, hosts, url, says):
    settings.SD_WEBHOOK_HOSTS = hosts
    response = queue_with_callback(client, url)
    assert response.status_code == 400
    assert says in " ".join(response.json()["errors"]["callback_url"])
    assert not GenerationSession.objects.exists()


def test_no_call_goes_to_a_host_taken_off_the_list_after_queueing(client, receiver, settings):
    session_id = queue_with_callback(client, receiver.url).json()["session_id"]
    GenerationSession.objects.filter(pk=session_id).update(
        status=Status.CANCELLED, finished_at=timezone.now()
    )
    settings.SD_WEBHOOK_HOSTS = ["example.org"]
    assert webhooks.deliver_due() == 0
    assert receiver.requests == []
    assert "SD_WEBHOOK_HOSTS" in GenerationSession.objects.get(pk=session_id).webhook_error


def test_a_worker_posts_the_webhook_when_its_job_ends(client, start_worker, settings):
    receiver = Receiver()
    settings.SD_WEBHOOK_HOSTS = ["127.0.0.1"]
    try:
        response = queue_with_callback(client, receiver.url, width=64, height=64)
        session_id = response.json()["session_id"]
        start_worker(SD_WEBHOOK_HOSTS="127.0.0.1", SD_WEBHOOK_SECRET="k")
        wait_for(lambda: receiver.requests, timeout=120, message="the worker's webhook")
        headers, body = receiver.requests[0]
        payload = json.loads(body)
        assert payload["session_id"] == session_id and payload["status"] == "completed"
        assert payload["image_url"].startswith("http://") and payload["image_url"].endswith(".png")
        assert headers["X-Sdsite-Signature"].startswith("sha256=")
    finally:
        receiver.close()


# --- The operator's page -------------------------------------------------------------


def test_ops_is_for_staff_and_streams_the_same_figures(web_server, make_session, admin_user):
    make_session()
    register_worker("host:9:ops", {"models": ["demo"]})
    anonymous = httpx.get(f"{web_server.url}/ops")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.headers["location"]
    assert httpx.get(f"{web_server.url}/ops/stream").status_code == 403

    with httpx.Client(base_url=web_server.url) as browser:
        login = browser.get("/admin/login/")
        token = browser.cookies["csrftoken"]
        browser.post(
            "/admin/login/",
            data={"username": "admin", "password": "password", "csrfmiddlewaretoken": token},
            headers={"Referer": f"{web_server.url}/admin/login/"},
        )
        assert login.status_code == 200
        page = browser.get("/ops")
        assert page.status_code == 200 and "Operations" in page.text
        with browser.stream("GET", "/ops/stream", timeout=10) as stream:
            data = next(
                line for line in stream.iter_lines() if line.startswith("data: ")
            )  # fmt: skip
        snapshot = json.loads(data.removeprefix("data: "))
        assert snapshot["queue"]["depth"] == 1
        assert snapshot["queue"]["by_model"] == {"demo": 1}
        assert [w["id"] for w in snapshot["workers"]] == ["host:9:ops"]
        assert snapshot["sessions"]["pending"] == 1


# --- Logs ----------------------------------------------------------------------------


def test_json_logs_carry_the_session_and_worker_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.json-logs")
    logger.addHandler(handler)
    try:
        set_worker("host:1:abcd")
        with job("3f0c"):
            logger.warning("step %d written", 3)
        logger.warning("idle")
    finally:
        logger.removeHandler(handler)
        set_worker(None)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "step 3 written" and first["level"] == "WARNING"
    assert first["session_id"] == "3f0c" and first["worker_id"] == "host:1:abcd"
    assert first["logger"] == "tests.json-logs" and "time" in first
    assert "session_id" not in second
