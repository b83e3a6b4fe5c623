"""What SillyTavern's polling of ComfyUI's `/history` costs: it asks every 100 ms while an image
is made, for the whole history. Prints the time and the queries of one GET /comfyui/history
(its newest 64 entries), with `?max_items=200` (the most it answers), and of
GET /comfyui/history/<id>, by the prompts an owner has.

    .venv/bin/python -m bench.comfyui_history [--prompts 10 200 1000] [--repeat 20]

Jobs are brought to `completed` by the state machine's own verbs; a tenth are batches of two.
"""

import argparse
import os
import time

from bench._setup import django_on_scratch_data, machine_line


def make_prompts(count: int, start: int) -> list:
    from generator.models import ComfyPrompt, GenerationSession
    from generator.services import session_create_batch

    jobs = GenerationSession.objects
    made = []
    for n in range(start, start + count):
        sessions = session_create_batch(
            prompt=f"a fox {n}", width=64, height=64, count=2 if n % 10 == 0 else 1
        )
        for session in sessions:
            jobs.claim(session.pk, "bench")
            token = jobs.get(pk=session.pk).claim_token
            jobs.finish(session.pk, token, f"images/2026/12/07/{session.pk}.png")
        nodes = {"save": "9", "sampler": "3", "decode": "8", "loader": "4", "loras": [],
                 "positive": "6", "negative": "7", "latent": "5"}  # fmt: skip
        made.append(ComfyPrompt.objects.create(session=sessions[0], nodes=nodes, workflow={}))
    return made


def timed(client, url: str, repeat: int) -> tuple[float, int, int]:
    """(ms per request, queries per request, entries answered)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)  # warm
    with CaptureQueriesContext(connection) as queries:
        began = time.perf_counter()
        for _ in range(repeat):
            response = client.get(url)
        elapsed = time.perf_counter() - began
    assert response.status_code == 200, response.content[:200]
    return elapsed / repeat * 1000, len(queries) // repeat, len(response.json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[10, 200, 1000])
    parser.add_argument("--repeat", type=int, default=20)
    options = parser.parse_args()
    os.environ["SD_API_AUTH"] = "off"  # SillyTavern sends no key
    django_on_scratch_data()
    from django.db import connection
    from django.test import Client

    client = Client(SERVER_NAME="127.0.0.1")
    print(machine_line())
    print(f"database: {connection.vendor}; {options.repeat} requests each")
    print("prompts | /history ms | queries | entries | max_items=200 ms | entries | /<id> ms")
    made: list = []
    for total in sorted(options.prompts):
        made += make_prompts(total - len(made), len(made))
        whole = timed(client, "/comfyui/history", options.repeat)
        most = timed(client, "/comfyui/history?max_items=200", options.repeat)
        one = timed(client, f"/comfyui/history/{made[0].prompt_id}", options.repeat)
        print(
            f"{total:7} | {whole[0]:11.1f} | {whole[1]:7} | {whole[2]:7} | {most[0]:16.1f} | "
            f"{most[2]:7} | {one[0]:8.1f}"
        )


if __name__ == "__main__":
    main()
