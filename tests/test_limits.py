"""Limits against abuse: request bodies refused while they stream."""

import socket
import time

import httpx
import pytest

from tests.processes import WebServer

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
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, sent


@pytest.mark.parametrize("path", ["/api/generate", "/anything", "/api/progress/x"])
def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(small_body_server, path):
    answer, sent = send_chunked(small_body_server.port, path, total=50 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"larger than the limit of 1 MB" in answer
    assert sent < 8 * 1024 * 1024  # answered long before the 50 MB were sent


def test_a_declared_length_over_the_limit_is_refused_before_reading(small_body_server):
    with socket.create_connection(("127.0.0.1", small_body_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 4000000000\r\nContent-Type: application/json\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


def test_bodies_within_the_limit_pass(small_body_server):
    response = httpx.post(f"{small_body_server.url}/api/generate", json={"prompt": "a"})
    assert response.status_code == 403  # on to Django: the CSRF check, not the size
