"""Many browsers watching: N concurrent SSE clients on one uvicorn process.

    .venv/bin/python -m bench.sse_load [--clients 1 100 500 1000] [--steps 30] [--rounds 3]
    bin/with-postgres .venv/bin/python -m bench.sse_load      # with LISTEN/NOTIFY

For each N it pauses the worker, queues a demo-model job, opens N streams on
it, lets the worker run, and reports: delivery latency from the worker's step
time ("at") to receipt (median, p95, p99), lost and out-of-order messages,
missing final messages, the web process's database reads per second, CPU and
memory, and client errors. Each N runs --rounds times: the table shows the
round with the median p95 and, beside it, the p95's spread over the rounds
(min / median / max), so a figure in the docs is one a rerun can reproduce.
Writes a Markdown table and an SVG chart to docs/ with --write.
"""

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in requirements.txt
    uvloop = None

from bench._setup import ROOT, django_on_scratch_data, machine_line

PREVIEW_URL = re.compile(rb'"type":"preview"[^}]*"image":"(/[^"]+)"')
"""A preview message that carries a URL (SD_PREVIEW_DELIVERY=url), not the image itself."""


class StreamResult:
    def __init__(self):
        self.steps: list[int] = []
        self.latencies: list[float] = []
        self.final: str | None = None
        self.error: str | None = None
        self.received = 0
        """Bytes of the stream."""
        self.previews = 0
        self.fetched: list[float] = []
        """Seconds from a preview's URL arriving to its image, fetched (url delivery)."""
        self.fetch_errors = 0
        self.fetches: list[asyncio.Task] = []


class SSEClient(asyncio.Protocol):
    """A bare SSE reader: while the stream runs it only timestamps what arrives.

    The clients share this machine's two cores with the server and the worker:
    parsing a thousand messages as they come would add the client's own lag to
    the latencies, so the parsing waits until the stream has ended.
    """

    def __init__(self, path: str, result: StreamResult, on_connected, port: int | None = None):
        """`port`: fetch each preview whose message names a URL there, as the page would."""
        self.port = port
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        self.result = result
        self.on_connected = on_connected
        self.connected = False
        self.chunks: list[tuple[float, bytes]] = []
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        transport.write(self.request)

    def data_received(self, data):
        self.chunks.append((time.time(), data))
        self.result.received += len(data)
        if self.port is not None:
            for match in PREVIEW_URL.finditer(data):
                fetch = fetch_image(self.port, match.group(1).decode(), self.result)
                self.result.fetches.append(asyncio.ensure_future(fetch))
        if not self.connected and b'"connected"' in data:
            self.connected = True
            self.on_connected()

    def parse(self):
        buffer = b""
        status_seen = False
        for received, data in self.chunks:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not status_seen:
                    status_seen = True
                    if b" 200 " not in line:
                        self.result.error = line.decode().strip()
                if line.startswith(b"data:"):
                    self.message(json.loads(line[5:]), received)

    def message(self, data, received):
        if data["type"] == "progress":
            self.result.steps.append(data["current_step"])
            if "at" in data:
                self.result.latencies.append(received - data["at"])
        elif data["type"] == "preview":
            self.result.previews += 1
        elif data["type"] in ("complete", "error", "cancelled"):
            self.result.final = data["type"]

    def connection_lost(self, exc):
        self.parse()
        if exc is not None:
            self.result.error = f"{type(exc).__name__}: {exc}"
        if not self.connected:  # never got going: let the round start anyway
            self.on_connected()
        self.closed.set_result(None)


async def fetch_image(port: int, path: str, result: StreamResult) -> None:
    """GET a preview as the page's <img> would; its time is counted, a failure too."""
    started = time.time()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        writer.close()
    except Exception:  # counted, reported
        result.fetch_errors += 1
        return
    result.received += len(answer)
    if answer.startswith(b"HTTP/1.1 200 "):
        result.fetched.append(time.time() - started)
    else:
        result.fetch_errors += 1


async def sse_client(
    port: int, path: str, result: StreamResult, on_connected, fetch_previews: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(
            lambda: SSEClient(path, result, on_connected, port if fetch_previews else None),
            "127.0.0.1",
            port,
        )
        await protocol.closed
        transport.close()
        if result.fetches:
            await asyncio.gather(*result.fetches)
    except Exception as exc:  # counted, reported
        result.error = f"{type(exc).__name__}: {exc}"
        on_connected()


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def queue_held(worker, queue_job):
    """Queue a job with the worker stopped (SIGSTOP), so it waits for every client. A worker
    stopped inside a write (its heartbeat) holds SQLite's lock: let it finish, and again."""
    from django.db import OperationalError

    for _ in range(20):
        os.kill(worker.popen.pid, signal.SIGSTOP)
        try:
            return await asyncio.to_thread(queue_job)
        except OperationalError as error:
            if "locked" not in str(error):
                raise
            os.kill(worker.popen.pid, signal.SIGCONT)
            await asyncio.sleep(0.5)
    raise RuntimeError("the database stayed locked")


async def one_round(server, worker, clients: int, steps: int, fetch_previews: bool = False):
    import httpx
    import psutil
    from django.db import connection

    from generator.services import session_create

    def queue_job():
        try:
            return session_create(prompt="load test", steps=steps, width=256, height=256)
        finally:
            # Each round's event loop has threads of its own: give the connection back
            # (to PostgreSQL's pool), or a dozen rounds exhaust it.
            connection.close()

    session = await queue_held(worker, queue_job)
    path = f"/api/progress/{session.pk}"
    results = [StreamResult() for _ in range(clients)]
    connected = asyncio.Event()
    count = [0]

    def on_connected():
        count[0] += 1
        if count[0] >= clients:
            connected.set()

    # The client's own garbage collections (a thousand connections' worth of
    # objects) would show up as delivery latency: none until the round is over.
    gc.collect()
    gc.disable()
    tasks = [
        asyncio.create_task(sse_client(server.port, path, r, on_connected, fetch_previews))
        for r in results
    ]
    await asyncio.wait_for(connected.wait(), 120)
    web = psutil.Process(server.popen.pid)
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{server.url}/api/stats/progress")).json()
        cpu_before, started = sum(web.cpu_times()[:2]), time.monotonic()
        os.kill(worker.popen.pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        elapsed = time.monotonic() - started
        cpu = (sum(web.cpu_times()[:2]) - cpu_before) / elapsed
        after = (await http.get(f"{server.url}/api/stats/progress")).json()
    gc.enable()
    every_step = sorted(set().union(*(set(r.steps) for r in results)))
    latencies = [x for r in results for x in r.latencies]
    fetched = [x for r in results for x in r.fetched]
    return {
        "clients": clients,
        "median_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "messages": sum(len(r.steps) for r in results),
        "lost": sum(len(set(every_step) - set(r.steps)) for r in results if not r.error),
        "out_of_order": sum(r.steps != sorted(r.steps) for r in results),
        "missing_final": sum(r.final != "complete" for r in results),
        "reads_per_s": (after["reads"] - before["reads"]) / elapsed,
        "cpu_percent": cpu * 100,
        "rss_mb": web.memory_info().rss / 2**20,
        "errors": sum(bool(r.error) for r in results),
        "first_error": next((r.error for r in results if r.error), ""),
        "kb_per_stream": sum(r.received for r in results) / clients / 1024,
        "previews": sum(r.previews for r in results) / clients,
        "fetch_ms": statistics.median(fetched) * 1000 if fetched else float("nan"),
        "fetch_errors": sum(r.fetch_errors for r in results),
        "seconds": elapsed,
    }


def svg_chart(rows, title: str) -> str:
    width, height, pad = 560, 300, 50
    top = max(max(r["p99_ms"] for r in rows) * 1.1, 1)
    xs = list(range(len(rows)))

    def point(i, value):
        x = pad + i * (width - 2 * pad) / max(1, len(rows) - 1)
        return x, height - pad - value / top * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',  # fmt: skip
        f'<text x="{pad}" y="20">{title}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#333"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
        f'<text x="5" y="{pad}">{top:.0f} ms</text>',
        f'<text x="5" y="{height - pad}">0</text>',
    ]
    for key, colour in (("median_ms", "#7c5cff"), ("p95_ms", "#21c4c4"), ("p99_ms", "#ff6b6b")):
        points = " ".join(f"{x:.0f},{y:.0f}" for x, y in (point(i, rows[i][key]) for i in xs))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        lx, ly = point(xs[-1], rows[-1][key])
        parts.append(f'<text x="{lx + 4:.0f}" y="{ly:.0f}" fill="{colour}">{key[:-3]}</text>')
    for i in xs:
        x, _ = point(i, 0)
        parts.append(f'<text x="{x - 10:.0f}" y="{height - pad + 18}">{rows[i]["clients"]}</text>')
    parts.append(f'<text x="{width / 2 - 40}" y="{height - 8}">open streams (N)</text></svg>')
    return "\n".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 100, 500, 1000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per N (the p95's spread)")
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=1,
        help="CPU threads for the worker's PyTorch (default 1: on this 2-core machine the "
        "worker stands in for a GPU box and leaves a core to the web process and clients)",
    )
    parser.add_argument("--write", action="store_true", help="write docs/sse-load-<db>.md/.svg")
    args = parser.parse_args()
    django_on_scratch_data(str(ROOT / "var" / "test-models"))
    from django.db import connection

    from tests.support.processes import WebServer, WorkerProcess, wait_for

    logs = Path(tempfile.mkdtemp(prefix="sdsite-sse-load-"))
    # A thousand clients from one address: past the default per-owner stream cap.
    server = WebServer(logs, SD_MAX_STREAMS_PER_OWNER=100_000)
    worker = WorkerProcess(logs, OMP_NUM_THREADS=args.worker_threads)
    rows = []
    try:
        wait_for(lambda: "ready" in worker.log(), timeout=120)
        # The clients get the same fast event loop as the server, so the
        # measurement is not the client's own lag.
        run = uvloop.run if uvloop else asyncio.run
        for n in args.clients:
            rounds = [run(one_round(server, worker, n, args.steps)) for _ in range(args.rounds)]
            p95s = sorted(r["p95_ms"] for r in rounds)
            middle = statistics.median(p95s)
            row = min(rounds, key=lambda r: abs(r["p95_ms"] - middle))
            rows.append({**row, "p95_spread": (p95s[0], middle, p95s[-1])})
            print(f"N={n}: p95 over {args.rounds} rounds " + " / ".join(f"{v:.1f}" for v in p95s))
    finally:
        worker.stop()
        server.stop()

    from django.conf import settings

    database = connection.vendor
    notify = " with LISTEN/NOTIFY" if database == "postgresql" else " (100 ms poll)"
    previews = (
        f"live previews every {settings.SD_PREVIEW_INTERVAL} s"
        if settings.SD_PREVIEWS
        else "no previews (SD_PREVIEWS=0)"
    )
    name = f"sse-load-{database}" + ("" if settings.SD_PREVIEWS else "-no-previews")
    lines = [
        f"{machine_line()}; one uvicorn process, one worker ({args.worker_threads} CPU "
        f"thread); {database}{notify}; "
        f"demo model, {args.steps} steps at 256x256 per round, {previews}; "
        f"{args.rounds} rounds per N, the row shown is the one with the median p95",
        "",
        "| N | latency median | p95 | p95 min / median / max | p99 | progress msgs | lost | "
        "out of order | missing final | DB reads/s | web CPU | web RSS | errors |",
        "|---" * 13 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['median_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
            + " / ".join(f"{v:.0f}" for v in r["p95_spread"])
            + f" ms | {r['p99_ms']:.1f} ms | {r['messages']} | {r['lost']} | {r['out_of_order']} | "
            f"{r['missing_final']} | {r['reads_per_s']:.1f} | {r['cpu_percent']:.0f} % | "
            f"{r['rss_mb']:.0f} MB | {r['errors']} |"
        )
        if r["first_error"]:
            lines.append(f"|  | first error: {r['first_error']} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        docs = ROOT / "docs"
        wrapper = "bin/with-postgres " if database == "postgresql" else ""
        command = f"{wrapper}.venv/bin/python -m bench.sse_load {' '.join(os.sys.argv[1:])}"
        (docs / f"{name}.md").write_text(
            f"# SSE load on {database}\n\n`{command}`\n\n{table}\n\n"
            f"![latency against N]({name}.svg)\n"
        )
        (docs / f"{name}.svg").write_text(
            svg_chart(rows, f"Delivery latency against open streams ({database}{notify})")
        )


if __name__ == "__main__":
    main()
