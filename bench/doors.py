"""What the doors of issue 36 cost a web process: the MCP SDK's import (loaded with the first
/mcp request, not at start), the first /mcp request against the next ones, and how fast
`GET /sdapi/v1/options` answers (clients read it before every generation):

    .venv/bin/python -m bench.doors [--requests 200]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._setup import ROOT, django_on_scratch_data, machine_line

INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}},
}  # fmt: skip
ACCEPT = {"Accept": "application/json, text/event-stream"}


def import_seconds(module: str, after: str = "") -> float:
    """Seconds a fresh Python takes to import `module` (after importing `after`)."""
    code = (
        "import os, time, django\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'sdsite.settings')\n"
        "django.setup()\n"
        f"{'import ' + after if after else ''}\n"
        f"start = time.perf_counter()\nimport {module}\n"
        "print(time.perf_counter() - start)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def timed(call) -> float:
    start = time.perf_counter()
    response = call()
    assert response.status_code == 200, response.text[:200]
    return time.perf_counter() - start


def main():
    from tests.support.processes import WebServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    django_on_scratch_data()
    print(f"# The doors' costs (issue 36)\n\n{machine_line()}\n")
    asgi = statistics.median(import_seconds("sdsite.asgi") for _ in range(3))
    sdk = statistics.median(
        import_seconds("generator.dialects.mcp", after="sdsite.asgi") for _ in range(3)
    )
    print(f"import sdsite.asgi (web start, SDK not loaded): {asgi * 1000:.0f} ms (median of 3)")
    print(f"import the MCP server and SDK (first /mcp request): {sdk * 1000:.0f} ms (median of 3)")
    server = WebServer(Path(tempfile.mkdtemp(prefix="sdsite-bench-doors-")), SD_API_AUTH="off")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            mcp = [timed(lambda: client.post("/mcp", json=INITIALIZE, headers=ACCEPT))
                   for _ in range(11)]  # fmt: skip
            print(f"POST /mcp initialize: first {mcp[0] * 1000:.0f} ms, then median "
                  f"{statistics.median(mcp[1:]) * 1000:.1f} ms")  # fmt: skip
            options = sorted(
                timed(lambda: client.get("/sdapi/v1/options")) for _ in range(args.requests)
            )
            median, p95 = statistics.median(options), options[int(len(options) * 0.95) - 1]
            print(
                f"GET /sdapi/v1/options x{args.requests}: median {median * 1000:.1f} ms, "
                f"p95 {p95 * 1000:.1f} ms"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
