"""Abuse replay, issue 30: the hostile PNG of "One upload freezes the server", on a real server.

A ~2 KB PNG whose zTXt `parameters` text goes on as one long line without a colon kept
the web process busy for 8-17 s at 48 KB and for hours at 900 KB (A1111's settings-line
pattern backtracked quadratically, holding the GIL). This posts it at both sizes to both
PNG-info routes of a real uvicorn process and prints each answer's time and the /healthz
latency meanwhile:

    .venv/bin/python -m bench.abuse_parsers
"""

import argparse
import base64
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench._setup import django_on_scratch_data, machine_line

ROUTES = ("/api/png-info", "/sdapi/v1/png-info")


def csrf_headers(client: httpx.Client) -> dict:
    """What an anonymous browser sends with its POSTs: the CSRF token of its cookie."""
    client.get("/")
    return {"X-CSRFToken": client.cookies["csrftoken"], "Referer": str(client.base_url) + "/"}


def png_info_answer(client: httpx.Client, route: str, png: bytes, headers: dict) -> dict:
    """The route's answer to `png`: status, JSON and wall-clock seconds."""
    start = time.monotonic()
    if route.startswith("/sdapi/"):
        response = client.post(route, json={"image": base64.b64encode(png).decode()})
    else:
        response = client.post(route, files={"image": ("hostile.png", png)}, headers=headers)
    seconds = time.monotonic() - start
    try:
        body = response.json()
    except ValueError:
        body = response.text[:200]
    return {"status": response.status_code, "json": body, "seconds": seconds}


def while_posting(url: str, client, route: str, headers: dict, length: int = 900_000):
    """(the route's answer to the issue's PNG at `length`, /healthz latencies meanwhile)."""
    from tests.support.hostile import hostile_png

    png = hostile_png(length)
    answer: dict = {}
    poster = threading.Thread(
        target=lambda: answer.update(png_info_answer(client, route, png, headers))
    )
    latencies = []
    with httpx.Client(timeout=600) as probe:
        probe.get(f"{url}/healthz")  # connected before the post starts
        poster.start()
        while True:  # at least once while the post is in flight, however short it is
            start = time.monotonic()
            probe.get(f"{url}/healthz")
            latencies.append(time.monotonic() - start)
            poster.join(0.01)
            if not poster.is_alive():
                break
    return answer, latencies


def main():
    from tests.support.processes import WebServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", nargs="*", type=int, default=[48_000, 900_000])
    args = parser.parse_args()
    django_on_scratch_data()
    print(f"# Abuse replay: hostile PNG metadata (issue 30)\n\n{machine_line()}\n")
    server = WebServer(Path(tempfile.mkdtemp(prefix="sdsite-abuse-parsers-")), SD_API_AUTH="off")
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            headers = csrf_headers(client)
            for length in args.lengths:
                for route in ROUTES:
                    answer, latencies = while_posting(server.url, client, route, headers, length)
                    worst = max(latencies, default=0.0)
                    print(
                        f"- {route}, a {length:,}-character line: HTTP {answer['status']} in "
                        f"{answer['seconds']:.3f} s; /healthz {len(latencies)} times meanwhile, "
                        f"slowest {worst:.3f} s"
                    )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
