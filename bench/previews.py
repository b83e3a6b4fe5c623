"""How a live preview should reach the streams: the variants side by side, interleaved.

    .venv/bin/python -m bench.previews [--clients 300 1000] [--rounds 2] [--steps 30]

Each variant is a web process and a worker (bench.sse_load's round: N streams on one
demo-model job, previews every SD_PREVIEW_INTERVAL):

- `inline`: today's. The worker writes each preview as a JPEG file; each web process reads
  it once (kept in memory by name) and sends it in the stream as a data: URL;
- `url`: the stream's message carries the preview's /media/ URL and each client fetches
  it, as the page's <img> would (SD_PREVIEW_DELIVERY=url);
- `times`: today's previews, and the step times written at most once a second instead of
  with every step (SD_STEP_TIMES_WRITE_INTERVAL=1).

The variants run one round each in turn, N after N, so a machine shared with other work
loads them alike; each has its own database, so only its own worker claims its job (the
others poll their empty queues meanwhile, alike for every variant). SQLite only. Prints
one line per round and a Markdown table of the medians over the rounds.
"""

import argparse
import asyncio
import math
import statistics
import tempfile
from pathlib import Path

from bench._setup import ROOT, django_on_scratch_data, machine_line
from bench.sse_load import one_round

VARIANTS = {
    "inline": ({"SD_PREVIEW_DELIVERY": "inline"}, {"SD_STEP_TIMES_WRITE_INTERVAL": "0"}),
    "url": ({"SD_PREVIEW_DELIVERY": "url"}, {"SD_STEP_TIMES_WRITE_INTERVAL": "0"}),
    "times": ({"SD_PREVIEW_DELIVERY": "inline"}, {"SD_STEP_TIMES_WRITE_INTERVAL": "1"}),
}
"""(the web process's environment, the worker's) of each variant."""
FIGURES = (
    ("p95_ms", "progress p95", "{:.0f} ms"),
    ("median_ms", "median", "{:.0f} ms"),
    ("cpu_percent", "web CPU", "{:.0f} %"),
    ("kb_per_stream", "KB per client", "{:.0f}"),
    ("previews", "previews per client", "{:.1f}"),
    ("fetch_ms", "preview fetch (median)", "{:.0f} ms"),
    ("seconds", "round", "{:.1f} s"),
)


def shown(form: str, value: float) -> str:
    return "-" if math.isnan(value) else form.format(value)


def play(pair: "Pair", clients: int, steps: int, url: bool) -> dict | None:
    """One round on `pair`'s server, worker and database (None: not over in 600 s)."""
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    settings.DATABASES["default"]["NAME"] = pair.database
    try:
        return asyncio.run(one_round(pair.server, pair.worker, clients, steps, fetch_previews=url))
    except TimeoutError:  # one_round gives its streams 600 s
        return None


class Pair:
    """A variant's web process and worker, on a database and media folder of their own (so
    no worker claims another variant's job, and none is ever stopped holding a lock)."""

    def __init__(self, logs: Path, web_env: dict, worker_env: dict):
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections

        from tests.support.processes import WebServer, WorkerProcess

        data = Path(tempfile.mkdtemp(prefix="sdsite-previews-data-"))
        self.database = str(data / "db.sqlite3")
        connections.close_all()
        settings.DATABASES["default"]["NAME"] = self.database
        call_command("migrate", verbosity=0)
        env = {"DATA_DIR": data, "DATABASE_URL": f"sqlite:///{self.database}"}
        self.server = WebServer(logs, SD_MAX_STREAMS_PER_OWNER=100_000, **env, **web_env)
        self.worker = WorkerProcess(logs, OMP_NUM_THREADS=1, **env, **worker_env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per variant and N")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    django_on_scratch_data(str(ROOT / "var" / "test-models"))
    from django.db import connection

    if connection.vendor != "sqlite":
        parser.error("bench.previews gives each variant a SQLite database of its own")
    from tests.support.processes import wait_for

    logs = Path(tempfile.mkdtemp(prefix="sdsite-previews-"))
    pairs = {name: Pair(logs, *VARIANTS[name]) for name in args.variants}
    rounds = {(name, n): [] for name in args.variants for n in args.clients}
    try:
        for pair in pairs.values():
            wait_for(lambda pair=pair: "ready" in pair.worker.log(), timeout=300)
        for name in args.variants:  # each worker loads the model before any figure
            play(pairs[name], 1, 2, name == "url")
        for n in args.clients:
            for index in range(args.rounds):
                for name in args.variants:
                    row = play(pairs[name], n, args.steps, name == "url")
                    if row is None:
                        print(f"N={n} round {index + 1} {name}: not over in 600 s", flush=True)
                        continue
                    rounds[name, n].append(row)
                    print(
                        f"N={n} round {index + 1} {name}: "
                        + ", ".join(
                            f"{label} {shown(form, row[key])}" for key, label, form in FIGURES
                        )
                        + f", lost {row['lost']}, errors {row['errors']}, "
                        f"fetch errors {row['fetch_errors']}",
                        flush=True,
                    )
    finally:
        for pair in pairs.values():
            pair.worker.stop()
            pair.server.stop()

    print()
    print(
        f"{machine_line()}; {connection.vendor}; demo model, {args.steps} steps at 256x256; "
        f"medians of {args.rounds} rounds per variant and N, interleaved"
    )
    print()
    print("| N | variant | " + " | ".join(label for _, label, _ in FIGURES) + " | lost | errors |")
    print("|---" * (len(FIGURES) + 4) + "|")
    for n in args.clients:
        for name in args.variants:
            rows = rounds[name, n]
            if not rows:
                print(f"| {n} | {name} | not over in 600 s |")
                continue
            cells = [
                shown(form, statistics.median(row[key] for row in rows)) for key, _, form in FIGURES
            ]
            lost = sum(row["lost"] for row in rows)
            errors = sum(row["errors"] + row["fetch_errors"] for row in rows)
            print(f"| {n} | {name} | " + " | ".join(cells) + f" | {lost} | {errors} |")


if __name__ == "__main__":
    main()
