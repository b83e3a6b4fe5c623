"""Issue 30's proxy attacks, replayed through a real nginx in front of a real uvicorn.

    .venv/bin/python -m bench.abuse_proxy [--flood-seconds 10]

nginx runs docs/deploy.md's own block (tests.support.processes.Nginx) on 127.0.0.1 and the
app runs as the Procfile does, default limits (4 jobs queued per owner, 30/m), with
SD_METRICS_ALLOWED=127.0.0.1/32 so that a visitor from another loopback address
(127.0.0.2, 127.0.0.3: Linux routes all of 127/8 to lo) stands for one from the
internet. The first three scenarios run with SD_TRUSTED_PROXIES=127.0.0.1 (the
documented setting) and without it (the default); each prints what held:

- two visitors: one queues 5 jobs, then the other queues one;
- a flood: one visitor posts for --flood-seconds, a fresh cookie and a forged
  X-Forwarded-For each time; how many jobs got queued;
- /metrics: from a visitor through nginx, with a forged X-Forwarded-For: 127.0.0.1,
  and from this machine;
- malformed X-Forwarded-For (not-an-ip, 1.2.3.4.5, ::ffff:zz) straight to uvicorn
  from loopback with uvicorn's own --proxy-headers left on (its default), on the
  native, A1111 and OpenAI routes, a worker running.
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench._setup import django_on_scratch_data, machine_line

JOB = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
MALFORMED = ["not-an-ip", "1.2.3.4.5", "::ffff:zz"]


def post_job(client: httpx.Client, **headers) -> int:
    """POST a job as the page does (CSRF cookie and header); the answer's status."""
    if "csrftoken" not in client.cookies:
        client.get("/")
    headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client.post("/api/generate", json=JOB, headers=headers).status_code


def clean_slate() -> None:
    from django.core.cache import cache

    from generator.models import GenerationSession

    GenerationSession.objects.all().delete()
    cache.clear()  # the request-rate counters


def held() -> dict:
    from generator.models import GenerationSession

    return dict(Counter(GenerationSession.objects.values_list("client_ip", flat=True)))


def two_visitors(url: str) -> None:
    from tests.support.processes import visitor

    clean_slate()
    with visitor(url, "127.0.0.2") as one, visitor(url, "127.0.0.3") as two:
        first = [post_job(one) for _ in range(5)]
        second = post_job(two)
    print(f"- visitor 127.0.0.2, five jobs: {first}; then 127.0.0.3: {second}")
    print(f"  jobs held by address: {held()}")


def flood(url: str, seconds: float) -> None:
    from tests.support.processes import visitor

    clean_slate()
    answers: Counter = Counter()
    number = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        number += 1
        forged = f"198.51.{number // 256 % 256}.{number % 256}"
        with visitor(url, "127.0.0.2") as flooder:  # a fresh cookie every time
            answers[post_job(flooder, **{"X-Forwarded-For": forged})] += 1
    print(
        f"- flood from 127.0.0.2 for {seconds:g} s, fresh cookie and forged X-Forwarded-For each "
        f"time: {sum(answers.values())} requests {dict(sorted(answers.items()))}; jobs queued: "
        f"{sum(held().values())} {held()} (was 833 in 30 s)"
    )


def metrics(url: str, app_url: str) -> None:
    from tests.support.processes import visitor

    with visitor(url, "127.0.0.2") as outsider, visitor(url, "127.0.0.1") as local:
        seen = {
            "visitor 127.0.0.2 via nginx": outsider.get("/metrics").status_code,
            "the same, X-Forwarded-For: 127.0.0.1": outsider.get(
                "/metrics", headers={"X-Forwarded-For": "127.0.0.1"}
            ).status_code,
            "127.0.0.1 via nginx": local.get("/metrics").status_code,
            "127.0.0.1 straight to uvicorn": httpx.get(f"{app_url}/metrics").status_code,
        }
    print("- /metrics: " + "; ".join(f"{who}: {status}" for who, status in seen.items()))


def malformed(tmp: Path, trusted: str) -> None:
    from generator.apikeys import issue_key, user_for
    from tests.support.processes import WebServer, WorkerProcess

    clean_slate()
    server = WebServer(tmp, proxy_headers=True, SD_TRUSTED_PROXIES=trusted)
    worker = WorkerProcess(tmp)
    try:
        _, key = issue_key(user_for("bench-tool"))
        keyed = {"Authorization": f"Bearer {key}"}
        for value in MALFORMED:
            forwarded = {"X-Forwarded-For": value}
            with httpx.Client(base_url=server.url, timeout=300) as client:
                native = post_job(client, **forwarded)
                a1111 = client.post("/sdapi/v1/txt2img", json=JOB, headers=forwarded | keyed)
                openai = client.post(
                    "/v1/images/generations",
                    json={"prompt": "a red circle", "size": "64x64", "response_format": "b64_json"},
                    headers=forwarded | keyed,
                )
            print(
                f"- X-Forwarded-For: {value!r} from loopback, uvicorn's --proxy-headers on: "
                f"native {native}, A1111 {a1111.status_code} "
                f"({a1111.headers.get('content-type')}), OpenAI {openai.status_code} "
                f"(was 500, 500 as HTML, 500 as HTML)"
            )
        print(f"  jobs held by address: {held()}")
    finally:
        worker.stop()
        server.stop()


def main():
    from tests.support.processes import NGINX_BIN, Nginx, WebServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=10)
    args = parser.parse_args()
    if not NGINX_BIN.exists():
        raise SystemExit(f"nginx is not installed at {NGINX_BIN} (apt-get install -y nginx)")
    django_on_scratch_data()
    tmp = Path(tempfile.mkdtemp(prefix="sdsite-abuse-proxy-"))
    print(f"# Behind nginx: the proxy replay\n\n{machine_line()}")
    for trusted in ("127.0.0.1", ""):
        print(f"\n## SD_TRUSTED_PROXIES={trusted or '(unset, the default)'}", flush=True)
        app = WebServer(tmp, SD_TRUSTED_PROXIES=trusted, SD_METRICS_ALLOWED="127.0.0.1/32")
        nginx = Nginx(tmp, app)
        try:
            two_visitors(nginx.url)
            flood(nginx.url, args.flood_seconds)
            metrics(nginx.url, app.url)
        finally:
            nginx.stop()
            app.stop()
    print("\n## Malformed headers, SD_TRUSTED_PROXIES=127.0.0.1 (the header is read)", flush=True)
    malformed(tmp, "127.0.0.1")


if __name__ == "__main__":
    main()
