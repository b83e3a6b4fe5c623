"""What operators probe: liveness, readiness and the workers command."""

import io

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from generator.worker.heartbeat import register_worker
from tests.support.processes import WebServer

pytestmark = pytest.mark.django_db(transaction=True)


def test_liveness_and_readiness(web_server):
    assert httpx.get(f"{web_server.url}/healthz").status_code == 200
    ready = httpx.get(f"{web_server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_readiness_is_503_with_a_reason_on_an_unmigrated_database(tmp_path):
    server = WebServer(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "not applied" in ready.json()["reason"]
    finally:
        server.stop()


def test_the_workers_command_lists_workers_and_fails_when_none_is_alive():
    with pytest.raises(CommandError, match="No worker is alive"):
        call_command("workers", stdout=io.StringIO())
    register_worker("host:1:abc", {"models": ["demo"]})
    register_worker("host:2:def", {}, ready=False)
    out = io.StringIO()
    call_command("workers", stdout=out)
    text = out.getvalue()
    assert "host:1:abc  alive  serves demo" in text
    assert "host:2:def  alive, starting" in text
    assert text.strip().endswith("2 alive.")
