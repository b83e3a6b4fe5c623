"""Issue 38's crowd of streams and slow sockets, replayed on a real uvicorn at `ulimit -n 1024`.

    .venv/bin/python -m bench.abuse_resources            # both, about a minute and a half
    .venv/bin/python -m bench.abuse_resources --only crowd

Each scenario starts its own uvicorn process as the Procfile runs it, under systemd's default
file limit (1024), loopback only, and prints what held:

- crowd: --streams progress streams from a crowd (the per-owner cap off, as many visitors
  would be), with the default settings, then with SD_MAX_STREAMS=5000: how many are served,
  whether every refusal is a whole JSON 503 with Retry-After and a clean close (never a
  reset), whether /healthz, POST /api/generate and the page's polling answer while they stay
  open, and what /metrics and the log say.
- slow: --sockets sockets, half trickling a request body a byte a second, half a second
  request's headers on a kept-alive connection a byte a second, with the default
  SD_HEADER_TIMEOUT and SD_BODY_TIMEOUT: how long until the server answered and closed each.
"""

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import h11
import httpx

from bench._setup import django_on_scratch_data, machine_line

FILE_LIMIT = 1024


def scenario(title: str):
    print(f"\n## {title}", flush=True)


async def get(port: int, path: str, keep_open: bool = False):
    """GET `path` on a connection of its own, read with h11: (status, headers, body, how the
    connection ended: "open" (a 200 held, with `keep_open`), "closed" or the error)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return None, {}, b"", type(exc).__name__
    client = h11.Connection(h11.CLIENT)
    writer.write(
        client.send(h11.Request(method="GET", target=path, headers=[("Host", "127.0.0.1")]))
    )
    writer.write(client.send(h11.EndOfMessage()))
    response, body = None, b""
    try:
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await asyncio.wait_for(reader.read(65536), 60))
            elif isinstance(event, h11.Response):
                response = event
                if keep_open and event.status_code == 200:
                    return 200, {}, writer, "open"
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        ended = "closed" if await asyncio.wait_for(reader.read(), 30) == b"" else "more data"
    except (OSError, TimeoutError, h11.RemoteProtocolError) as exc:
        ended = type(exc).__name__
    writer.close()
    status = response.status_code if response else None
    headers = {k.decode(): v.decode() for k, v in response.headers} if response else {}
    return status, headers, body, ended


def others(url: str) -> str:
    """What /healthz, the page, POST /api/generate and its polling answered."""
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/healthz").status_code
            page = client.get("/")
            queued = client.post(
                "/api/generate",
                json={"prompt": "while the crowd watches", "steps": 2},
                headers={"X-CSRFToken": client.cookies.get("csrftoken", "")},
            )
            polled = "-"
            if queued.status_code == 202:
                polled = client.get(f"/api/sessions/{queued.json()['session_id']}").status_code
            return (
                f"/healthz {health}, the page {page.status_code}, POST /api/generate "
                f"{queued.status_code}, polling {polled}"
            )
    except httpx.HTTPError as exc:
        return type(exc).__name__


def is_json_message(body: bytes) -> bool:
    try:
        return "message" in json.loads(body)
    except ValueError:
        return False


def metric(url: str, name: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = [line.split(" ")[1] for line in text.splitlines() if line.startswith(name + " ")]
    return found[0] if found else "absent"


async def open_crowd(server, path: str, count: int):
    """Open `count` streams at once, ask the rest while they stay open, then close them."""
    started = time.monotonic()
    answers = await asyncio.gather(*(get(server.port, path, True) for _ in range(count)))
    seconds = time.monotonic() - started
    meanwhile = await asyncio.to_thread(others, server.url)
    for _, _, writer, ended in answers:
        if ended == "open":
            writer.close()
    return answers, seconds, meanwhile


def crowd(tmp: Path, count: int) -> None:
    from generator.services import session_create
    from tests.support.processes import WebServer

    session = session_create(prompt="watched")
    path = f"/api/progress/{session.pk}"
    for title, env in (
        ("defaults", {}),
        ("SD_MAX_STREAMS=5000", {"SD_MAX_STREAMS": 5000}),
    ):
        scenario(f"{count} streams from a crowd, ulimit -n {FILE_LIMIT}, {title}")
        server = WebServer(tmp, file_limit=FILE_LIMIT, SD_MAX_STREAMS_PER_OWNER=10**6, **env)
        try:
            answers, seconds, meanwhile = asyncio.run(open_crowd(server, path, count))
            served = sum(1 for *_, ended in answers if ended == "open")
            refused = [a for a in answers if a[3] != "open"]
            whole = sum(
                1
                for status, headers, body, ended in refused
                if status == 503
                and headers.get("retry-after") == "10"
                and ended == "closed"
                and is_json_message(body)
            )
            endings = Counter(
                f"{status} {ended}" for status, _, _, ended in refused if ended != "closed"
            )
            print(f"- streams served: {served}; refused: {len(refused)}, in {seconds:.1f} s")
            print(
                f"- refusals that were a whole JSON 503 with Retry-After: 10, then a clean close:"
                f" {whole} of {len(refused)}" + (f"; others: {dict(endings)}" if endings else "")
            )
            print(f"- while the streams stay open: {meanwhile}")
            counted = metric(server.url, 'sdsite_streams_refused_total{reason="process"}')
            connections = metric(server.url, "sdsite_connections_refused_total")
            print(
                f'- sdsite_streams_refused_total{{reason="process"}}: {counted}; '
                f"sdsite_connections_refused_total: {connections} (the crowd opened at once, "
                "past the connections admitted)"
            )
            log = server.log()
            print(
                f"- log lines about refused streams: {log.count('progress stream(s) refused')}; "
                f"the clamp warned: {'SD_MAX_STREAMS=5000 is more than' in log}"
            )
        finally:
            server.stop()


async def slow_socket(port: int, kind: str, within: float) -> tuple[str, float]:
    """One socket that trickles a byte a second: a POST body ("body") or, after a first
    request answered, a second request's headers ("headers"). (what the server did, seconds
    from the first trickled byte until it closed the connection)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return type(exc).__name__, 0.0
    try:
        if kind == "body":
            writer.write(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
        else:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not first.startswith(b"HTTP/1.1 200"):
                return f"first request {first[9:12].decode()}", 0.0
            await asyncio.wait_for(reader.readexactly(2), 30)  # "ok"
        # The bytes it trickles: a body, or a request whose headers never end.
        prefix = b"" if kind == "body" else b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        started = time.monotonic()
        answer = b""
        sent = 0
        while time.monotonic() - started < within:
            if not answer:
                writer.write(prefix[sent : sent + 1] or b"x")
                sent += 1
            try:
                data = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                continue
            if not data:
                what = answer[9:12].decode() if answer else "closed"
                return what, time.monotonic() - started
            answer += data
        return "still open", time.monotonic() - started
    except (OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__, 0.0
    finally:
        writer.close()


def slow(tmp: Path, count: int) -> None:
    from tests.support.processes import WebServer

    scenario(
        f"{count} sockets trickling a byte a second (half bodies, half kept-alive second "
        f"requests' headers), ulimit -n {FILE_LIMIT}, defaults"
    )
    server = WebServer(tmp, file_limit=FILE_LIMIT)
    try:

        async def run():
            kinds = ["body", "headers"] * (count // 2)
            tasks = [asyncio.create_task(slow_socket(server.port, k, 90)) for k in kinds]
            return kinds, await asyncio.gather(*tasks)

        kinds, results = asyncio.run(run())
        for kind in ("body", "headers"):
            mine = [r for k, r in zip(kinds, results, strict=True) if k == kind]
            outcomes = Counter(what for what, _ in mine)
            closed = [s for what, s in mine if what in ("408", "closed")]
            spread = (
                f"closed after {min(closed):.1f} s (fastest), {statistics.median(closed):.1f} s "
                f"(median), {max(closed):.1f} s (slowest)"
                if closed
                else "none closed"
            )
            print(f"- trickled {kind}: {dict(outcomes)}; {spread}")
        print(f"- afterwards: {others(server.url)}")
        bodies = metric(server.url, 'sdsite_requests_timed_out_total{part="body"}')
        headers = metric(server.url, 'sdsite_requests_timed_out_total{part="headers"}')
        connections = metric(server.url, "sdsite_connections_refused_total")
        print(
            f"- sdsite_requests_timed_out_total: body {bodies}, headers {headers}; "
            f"sdsite_connections_refused_total: {connections}"
        )
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1200)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="crowd slow")
    args = parser.parse_args()
    only = set(args.only or ["crowd", "slow"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max(args.streams, args.sockets) + 256  # our side of every socket
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(wanted, hard)), hard))
    django_on_scratch_data()
    tmp = Path(tempfile.mkdtemp(prefix="sdsite-abuse-resources-"))
    print(f"# Crowds of streams and slow sockets\n\n{machine_line()}")
    if "crowd" in only:
        crowd(tmp, args.streams)
    if "slow" in only:
        slow(tmp, args.sockets)


if __name__ == "__main__":
    main()
