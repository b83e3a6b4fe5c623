"""A crowd of progress streams and slow clients against a real uvicorn under a low `ulimit -n`:
the server keeps room for everything else, refuses cleanly, and times every request out."""

import asyncio
import json
import logging
import select
import socket
import time

import h11
import httpx
import pytest

from generator.web.capacity import FileLimit
from tests.support.processes import WebServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]

FILE_LIMIT = 256
"""Under it the server admits 208 connections and 104 progress streams (capacity.FileLimit)."""
STREAMS = 104


async def request(port: int, path: str, keep_open: bool = False):
    """GET `path` on a connection of its own, read with h11 (a reset raises): the response,
    its body, and whether the server closed the connection cleanly after it (EOF, no reset).
    With `keep_open`, a 200 is not read past its headers: (response, the open writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    writer.write(
        client.send(h11.Request(method="GET", target=path, headers=[("Host", "127.0.0.1")]))
    )
    writer.write(client.send(h11.EndOfMessage()))
    response, body = None, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 60))
        elif isinstance(event, h11.Response):
            response = event
            if keep_open and event.status_code == 200:
                return response, writer
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    closed = await asyncio.wait_for(reader.read(), 30) == b""  # a reset raises here
    writer.close()
    return response, body, closed


async def open_crowd(port: int, path: str, count: int):
    """`count` progress streams opened at once: (the open ones' writers, the refused ones'
    (response, body, closed cleanly))."""
    answers = await asyncio.gather(*(request(port, path, keep_open=True) for _ in range(count)))
    opened = [answer[1] for answer in answers if len(answer) == 2]
    return opened, [answer for answer in answers if len(answer) == 3]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_the_default_stream_cap_is_half_of_what_the_file_limit_admits():
    assert FileLimit(1024).connections == 928
    assert FileLimit(1024).max_streams(None) == 464
    assert FileLimit(FILE_LIMIT).max_streams(None) == STREAMS
    assert FileLimit(1_048_576).max_streams(None) == 2000  # the hub's measured scale
    assert FileLimit(1024).max_streams(300) == 300


def test_sd_max_streams_past_three_quarters_of_the_file_limit_is_clamped_with_a_warning(caplog):
    limit = FileLimit(1024)
    with caplog.at_level(logging.WARNING, logger="generator.web.capacity"):
        assert limit.max_streams(2000) == 696
        assert limit.max_streams(2000) == 696
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # once, not at every stream
    assert "SD_MAX_STREAMS=2000" in warnings[0] and "696 streams at most" in warnings[0]


def test_a_crowd_of_streams_leaves_room_for_health_checks_the_page_and_the_api(
    tmp_path, make_session
):
    session = make_session()
    server = WebServer(tmp_path, file_limit=FILE_LIMIT, SD_MAX_STREAMS_PER_OWNER=10**6)

    async def crowd_then_others():
        opened, refused = await open_crowd(server.port, f"/api/progress/{session.pk}", 150)
        try:
            return len(opened), refused, await asyncio.to_thread(others)
        finally:
            for writer in opened:
                writer.close()

    def others():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/healthz").status_code
            page = client.get("/").status_code
            queued = client.post(
                "/api/generate",
                json={"prompt": "while the crowd watches", "steps": 2},
                headers={"X-CSRFToken": client.cookies.get("csrftoken", "")},
            )
            polled = client.get(f"/api/sessions/{queued.json()['session_id']}").status_code
            metrics = client.get("/metrics").text
        return health, page, queued.status_code, polled, metrics

    try:
        opened, refused, (health, page, queued, polled, metrics) = asyncio.run(crowd_then_others())
        assert opened == STREAMS
        assert len(refused) == 150 - STREAMS
        for response, body, closed in refused:
            headers = dict(response.headers)
            assert (response.status_code, headers[b"retry-after"], closed) == (503, b"10", True)
            assert "(SD_MAX_STREAMS)" in json.loads(body)["message"]
        assert (health, page, queued, polled) == (200, 200, 202, 200)
        refusals = 'sdsite_streams_refused_total{reason="process"}'
        assert metric(metrics, refusals) == 150 - STREAMS
        # Logged at once, then at most once a minute with the count since.
        assert server.log().count("progress stream(s) refused with a 503") == 1
        assert "1 progress stream(s) refused with a 503" in server.log()
    finally:
        server.stop()


def test_connections_refused_near_the_file_limit_get_the_whole_503_not_a_reset(tmp_path):
    server = WebServer(tmp_path, file_limit=FILE_LIMIT)
    idle = []
    try:
        admitted = FileLimit(FILE_LIMIT).connections
        while len(idle) < admitted:  # silent sockets fill what the server admits
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))

        async def refused_requests(count: int):
            return await asyncio.gather(*(request(server.port, "/healthz") for _ in range(count)))

        for response, body, closed in asyncio.run(refused_requests(8)):
            headers = dict(response.headers)
            assert (response.status_code, headers[b"retry-after"], closed) == (503, b"10", True)
            assert "connections open" in json.loads(body)["message"]
        for sock in idle:
            sock.close()
        idle.clear()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert metric(metrics, "sdsite_connections_refused_total") >= 8
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def trickle(sock: socket.socket, data: bytes, every: float, within: float) -> tuple[bytes, float]:
    """Send `data` a byte every `every` seconds until the server answers or closes:
    (what it answered, up to its FIN, and the seconds that took)."""
    started = time.monotonic()
    answer = b""
    sent = 0
    while time.monotonic() - started < within:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            chunk = sock.recv(65536)  # a reset would raise here
            if not chunk:
                return answer, time.monotonic() - started
            answer += chunk
        elif sent < len(data) and not answer:
            sock.sendall(data[sent : sent + 1])
            sent += 1
    raise AssertionError(f"not closed within {within} s; answered {answer[:200]!r}")


def test_a_body_trickled_a_byte_at_a_time_gets_a_408_within_its_deadline(tmp_path):
    server = WebServer(tmp_path, SD_BODY_TIMEOUT=2, SD_HEADER_TIMEOUT=2)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            # Each byte within the 2 s a body may stall: the old rule never fired.
            answer, seconds = trickle(sock, b'{"prompt": "' + b"x" * 87, every=0.25, within=15)
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408")
        assert "SD_BODY_MIN_RATE" in json.loads(body)["message"]
        assert 1.5 <= seconds <= 6
        metrics = httpx.get(f"{server.url}/metrics").text
        assert metric(metrics, 'sdsite_requests_timed_out_total{part="body"}') == 1
    finally:
        server.stop()


def test_a_kept_alive_connections_next_request_has_its_own_header_deadline(tmp_path):
    server = WebServer(tmp_path, SD_HEADER_TIMEOUT=2)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while not first.endswith(b"ok"):
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            # The next request's headers, a byte every 0.25 s: never done, closed at 2 s.
            answer, seconds = trickle(
                sock,
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100,
                every=0.25,
                within=15,
            )
        assert answer == b""
        assert 1.9 <= seconds <= 6
        metrics = httpx.get(f"{server.url}/metrics").text
        assert metric(metrics, 'sdsite_requests_timed_out_total{part="headers"}') == 1
    finally:
        server.stop()
