"""The client's address: the peer, or past trusted proxies the right-most untrusted
X-Forwarded-For hop; garbage in the header never becomes an address (generator.addresses)."""

import ipaddress
import logging
import subprocess
import sys

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generator import addresses
from generator.addresses import forwarded_client, networks
from tests.support.processes import ROOT, WebServer, process_env

NGINX = networks(("127.0.0.1", "10.0.0.0/8"))


@pytest.mark.any_database
@pytest.mark.parametrize(
    "peer, header, client",
    [
        # An untrusted peer is the client, whatever it says.
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),
        # A trusted proxy's header names the client: its right-most hop, as nginx appends it.
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # What the client wrote itself stays on the left, behind its real address.
        ("127.0.0.1", "1.1.1.1, 2.2.2.2, 198.51.100.1", "198.51.100.1"),
        # Trusted hops (a load balancer in 10/8 before nginx) are skipped.
        ("127.0.0.1", "1.1.1.1, 198.51.100.1, 10.0.0.7", "198.51.100.1"),
        # Only trusted hops: the left-most of them.
        ("127.0.0.1", "10.0.0.8, 10.0.0.7", "10.0.0.8"),
        # No header from a trusted proxy: the proxy itself.
        ("127.0.0.1", "", "127.0.0.1"),
        # Garbage ends the walk at the nearest trusted hop, never past it.
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "1.2.3.4.5", "127.0.0.1"),
        ("127.0.0.1", "::ffff:zz", "127.0.0.1"),
        ("127.0.0.1", "198.51.100.1, garbage, 10.0.0.7", "10.0.0.7"),
        ("127.0.0.1", "198.51.100.1,", "127.0.0.1"),
        ("127.0.0.1", "fe80::1%eth0", "127.0.0.1"),
        # Written the way the database column keeps them.
        ("127.0.0.1", " 2001:DB8::0001 ", "2001:db8::1"),
        ("127.0.0.1", "::ffff:198.51.100.1", "198.51.100.1"),
        ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # A peer that is no address (a Unix socket, uvicorn's own rewrite): unknown.
        ("", "198.51.100.1", ""),
        ("not-an-ip", "", ""),
    ],
)
def test_the_client_is_the_right_most_untrusted_hop_and_garbage_is_never_an_address(
    peer, header, client
):
    assert forwarded_client(peer, header, NGINX) == client


@pytest.mark.any_database
def test_without_trusted_proxies_no_forwarding_header_is_believed():
    assert forwarded_client("127.0.0.1", "198.51.100.1", networks(())) == "127.0.0.1"


@pytest.mark.any_database
def test_a_header_of_only_trusted_hops_is_walked_a_bounded_number_of_them():
    header = ", ".join(["1.1.1.1"] + ["10.0.0.9"] * 10_000)
    assert forwarded_client("127.0.0.1", header, NGINX) == "10.0.0.9"


@pytest.mark.any_database
@given(peer=st.one_of(st.ip_addresses().map(str), st.text(max_size=50)), header=st.text())
def test_any_header_gives_an_address_or_nothing_and_never_raises(peer, header):
    client = forwarded_client(peer, header, networks(("0.0.0.0/0", "::/0")))
    assert client == "" or str(ipaddress.ip_address(client)) == client


@pytest.mark.any_database
def test_malformed_headers_are_logged_once_a_minute_with_a_count(caplog, monkeypatch):
    monkeypatch.setattr(addresses, "warnings", addresses._Warnings())
    with caplog.at_level(logging.WARNING, logger="generator.addresses"):
        for _ in range(3):
            forwarded_client("127.0.0.1", "not-an-ip", NGINX)
    assert [r.getMessage() for r in caplog.records] == [
        "Ignored a malformed X-Forwarded-For from trusted proxy 127.0.0.1: 'not-an-ip'"
    ]
    addresses.warnings.last -= addresses.WARN_EVERY_SECONDS
    forwarded_client("127.0.0.1", "1.2.3.4.5", NGINX)
    assert caplog.records[-1].getMessage().endswith("(2 more since the last warning)")


@pytest.mark.any_database
def test_a_wrong_trusted_proxy_stops_the_start_and_is_named():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=process_env(SD_TRUSTED_PROXIES="127.0.0.1,nginx.internal"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SD_TRUSTED_PROXIES: 'nginx.internal' is not an IP address or network" in result.stderr


MALFORMED = ["not-an-ip", "1.2.3.4.5", "::ffff:zz"]


@pytest.mark.django_db(transaction=True)
def test_a_malformed_forwarded_for_gets_the_normal_answer_on_every_route(tmp_path, start_worker):
    """uvicorn's own --proxy-headers (its default, trusting loopback) left on, as an operator
    who copied an older command would: its rewrite of the client is undone, and the header's
    garbage is ignored, on the native, A1111 and OpenAI routes alike (each was a 500)."""
    from generator.apikeys import issue_key, user_for
    from generator.models import GenerationSession, Status

    server = WebServer(
        tmp_path, proxy_headers=True, SD_TRUSTED_PROXIES="127.0.0.1", SD_MAX_QUEUED_PER_OWNER=4
    )
    try:
        small = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
        for value in MALFORMED:
            page = httpx.Client(base_url=server.url)
            page.get("/")  # a fresh browser each time, as the page posts: CSRF cookie and header
            csrf = {"X-CSRFToken": page.cookies["csrftoken"]}
            native = page.post(
                "/api/generate", json=small, headers={"X-Forwarded-For": value} | csrf
            )
            assert native.status_code == 202, native.text
            metrics = httpx.get(f"{server.url}/metrics", headers={"X-Forwarded-For": value})
            assert metrics.status_code == 200  # the client is this machine, as it is
        # Each job is the peer's, the nearest trusted hop: no header value was taken.
        natives = GenerationSession.objects.all()
        assert list(natives.values_list("client_ip", flat=True)) == ["127.0.0.1"] * 3
        natives.delete()  # not to keep the tools' jobs waiting
        # The tools' routes wait for their image: one value each, the worker running.
        start_worker()
        _, key = issue_key(user_for("tool"), "tests")
        keyed = {"Authorization": f"Bearer {key}"}
        a1111 = httpx.post(
            f"{server.url}/sdapi/v1/txt2img",
            json=small,
            headers={"X-Forwarded-For": "::ffff:zz"} | keyed,
            timeout=180,
        )
        assert a1111.status_code == 200, a1111.text
        assert a1111.json()["images"]
        openai = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"prompt": "a red circle", "size": "64x64", "response_format": "b64_json"},
            headers={"X-Forwarded-For": "1.2.3.4.5"} | keyed,
            timeout=180,
        )
        assert openai.status_code == 200, openai.text
        assert openai.json()["data"][0]["b64_json"]
        tools = GenerationSession.objects.values_list("status", "client_ip")
        assert list(tools) == [(Status.COMPLETED, "127.0.0.1")] * 2
        assert "Ignored a malformed X-Forwarded-For from trusted proxy 127.0.0.1" in server.log()
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_uvicorn_s_own_proxy_headers_cannot_name_the_client_for_the_app(tmp_path):
    """With SD_TRUSTED_PROXIES empty, a loopback client's forged header names nobody, even where
    uvicorn runs with its default --proxy-headers (which trusts loopback)."""
    from generator.models import GenerationSession

    server = WebServer(tmp_path, proxy_headers=True, SD_METRICS_ALLOWED="127.0.0.1/32")
    try:
        forged = {"X-Forwarded-For": "198.51.100.9"}
        page = httpx.Client(base_url=server.url)
        page.get("/")
        csrf = {"X-CSRFToken": page.cookies["csrftoken"]}
        answer = page.post("/api/generate", json={"prompt": "a", "steps": 2}, headers=forged | csrf)
        assert answer.status_code == 202, answer.text
        assert GenerationSession.objects.get().client_ip == "127.0.0.1"
        # Nor does a forged remote address shut this machine out of /metrics.
        assert httpx.get(f"{server.url}/metrics", headers=forged).status_code == 200
    finally:
        server.stop()
