"""Seconds a step on a GPU (or a CPU): eager against channels_last against torch.compile's
modes, the compile's cost cold and from its on-disk cache, the tracking's cost, and a batch
of 8 jobs against the same 8 one by one.

    .venv/bin/python -m bench.gpu_speed --device cuda          # sd15-shaped 512, sdxl-shaped 1024
    .venv/bin/python -m bench.gpu_speed --device cpu --models demo --sizes 256 --steps 4

Each variant runs in a fresh process (the way a worker starts), with SD_TORCH_COMPILE,
SD_CHANNELS_LAST and SD_COMPILE_CACHE_DIR set as a worker would have them:

- s/step: (median job of --steps steps - median job of 1 step) / (steps - 1). Both end
  with the image on the CPU, so the GPU's work is all counted, whatever the CPU ran ahead.
- first job: load, then the first job (with a compile variant its "compiling" warm-up);
  compile = first job - a warm job. A compile variant runs twice: with an empty cache
  ("cold") and again in a new process over the cache the first left ("cached").
- tracking: a job as the worker runs it (progress writer thread, step writes, previews)
  against the same call with a do-nothing step hook, median of --pairs pairs.
- batch: --batch jobs (other prompts and seeds, same size) in one call against one by one.

A shaped model (`sd15-shaped`, `sdxl-shaped`: random weights, real networks) is built in
--models-dir on first use. float16 on a GPU, float32 on a CPU (the worker's choice).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench._setup import ROOT, machine_line

VARIANTS = ("eager", "channels_last", "default", "reduce-overhead", "max-autotune")
"""eager: no channels_last, no compile; the compile modes run with channels_last."""
PROMPTS = ["a lighthouse at dawn", "a red fox in the snow", "a bowl of ripe cherries"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--models", nargs="+", default=["sd15-shaped", "sdxl-shaped"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="one a model")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:4]), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="warm jobs per timing")
    parser.add_argument("--pairs", type=int, default=5, help="tracked/bare pairs")
    parser.add_argument("--batch", type=int, default=8, help="0: no batch figure")
    parser.add_argument("--models-dir", default=str(ROOT / "var" / "bench-models"))
    parser.add_argument("--child-timeout", type=float, default=900.0)
    parser.add_argument("--json", help="append each result as a JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if len(args.sizes) not in (1, len(args.models)):
        parser.error("--sizes: one size, or one a model")
    sizes = args.sizes * len(args.models) if len(args.sizes) == 1 else args.sizes
    print(machine_line(args.device), flush=True)
    print(f"{args.steps} steps, guidance 7.5, Euler, median of {args.runs} warm jobs", flush=True)
    rows = []
    for model, size in zip(args.models, sizes, strict=True):
        folder = built_model(model, args.models_dir)
        for variant in args.variants:
            cache = tempfile.mkdtemp(prefix="sdsite-compile-cache-")
            row = run_child(args, folder, model, size, variant, cache, first_only=False)
            if row and variant not in ("eager", "channels_last"):
                cached = run_child(args, folder, model, size, variant, cache, first_only=True)
                if cached:
                    row["cached_first_job"] = cached["first_job"]
                    row["cached_load"] = cached["load"]
            if row:
                rows.append(row)
                print_row(row, rows)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(row) + "\n")
    print_table(rows)


def built_model(model: str, models_dir: str) -> str:
    from bench.sd15_shaped import model_argument

    started = time.monotonic()
    folder = model_argument(model, models_dir)
    if folder != model:
        print(f"{model}: {folder} ({time.monotonic() - started:.0f} s)", flush=True)
    return folder


def run_child(args, folder, model, size, variant, cache, first_only) -> dict | None:
    command = [
        sys.executable, "-m", "bench.gpu_speed", "--child", variant, "--device", args.device,
        "--models", folder, "--sizes", str(size), "--steps", str(args.steps),
        "--runs", str(args.runs), "--pairs", str(args.pairs), "--batch", str(args.batch),
        "--cache-dir", cache, "--models-dir", args.models_dir,
    ] + (["--first-only"] if first_only else [])  # fmt: skip
    what = f"{model} {size} px {variant}{' (cached)' if first_only else ''}"
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=args.child_timeout
        )
    except subprocess.TimeoutExpired:
        print(f"{what}: over {args.child_timeout:.0f} s, stopped", flush=True)
        return None
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT ") :])
            row.update(model=model, wall=time.monotonic() - started)
            return row
    print(f"{what}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
    return None


def child(args):
    """One variant in this fresh process; prints its figures as one RESULT line."""
    variant, folder, size = args.child, args.models[0], args.sizes[0]
    os.environ["SD_DEVICE"] = args.device
    os.environ["SD_TORCH_COMPILE"] = variant if variant in VARIANTS[2:] else "off"
    os.environ["SD_CHANNELS_LAST"] = "0" if variant == "eager" else "1"
    os.environ["SD_COMPILE_CACHE_DIR"] = args.cache_dir
    from bench._setup import django_on_scratch_data

    django_on_scratch_data(args.models_dir)
    from generator.pipelines import GenerationRequest, create_backend

    def request(steps=args.steps, seed=1, prompt=PROMPTS[0]):
        return GenerationRequest(prompt, "", steps, 7.5, size, size, seed)

    def job(req) -> float:
        started = time.perf_counter()
        backend.generate(req, lambda *a: True, phases.append)
        return time.perf_counter() - started

    phases: list[str] = []
    backend = create_backend("pytorch", folder, args.device)
    started = time.perf_counter()
    backend.load(lambda phase: None)
    result = {"variant": variant, "size": size, "load": time.perf_counter() - started}
    result["first_job"] = job(request())
    result["phases"] = list(phases)
    result["dtype"] = str(backend.pipe.unet.dtype)
    if args.first_only:
        return print("RESULT " + json.dumps(result), flush=True)
    full = [job(request(seed=run)) for run in range(args.runs)]
    one = [job(request(steps=1, seed=run)) for run in range(args.runs)]
    result["warm_job"] = statistics.median(full)
    result["compile"] = result["first_job"] - result["warm_job"]
    result["step"] = (statistics.median(full) - statistics.median(one)) / (args.steps - 1)
    result.update(tracking(backend, request, args.pairs))
    if args.batch > 1:
        result.update(batching(backend, request, args.batch))
    print("RESULT " + json.dumps(result), flush=True)


def tracking(backend, request, pairs: int) -> dict:
    """A job with the worker's tracking against the same call without, alternating."""
    from bench.backends import timed_tracked_job

    bare, tracked = [], []
    for pair in range(pairs):
        req = request(seed=100 + pair)
        order = [0, 1] if pair % 2 else [1, 0]
        for which in order:
            if which:
                tracked.append(timed_tracked_job(backend, "pytorch", req)[0])
            else:
                started = time.perf_counter()
                backend.generate(req, lambda *a: True, lambda phase: None)
                bare.append(time.perf_counter() - started)
    return {
        "bare_job": statistics.median(bare),
        "tracked_job": statistics.median(tracked),
        "tracking": statistics.median(tracked) / statistics.median(bare) - 1,
    }


def batching(backend, request, size: int) -> dict:
    """`size` jobs in one call (as SD_WORKER_BATCH runs them) against one by one."""
    requests = [request(seed=200 + n, prompt=PROMPTS[n % len(PROMPTS)]) for n in range(size)]
    ok = lambda *a: True  # noqa: E731
    started = time.perf_counter()
    backend.generate_batch(requests, ok, lambda phase: None)  # warm-up (a compile, if on)
    batch_first = time.perf_counter() - started
    started = time.perf_counter()
    backend.generate_batch(requests, ok, lambda phase: None)
    together = time.perf_counter() - started
    started = time.perf_counter()
    for each in requests:
        backend.generate(each, ok, lambda phase: None)
    alone = time.perf_counter() - started
    return {"batch": size, "batch_first": batch_first, "batched": together, "one_by_one": alone}


def print_row(row: dict, rows: list) -> None:
    eager = next((r for r in rows if r["model"] == row["model"] and r["variant"] == "eager"), None)
    speedup = f", {eager['step'] / row['step']:.2f}x eager's steps/s" if eager else ""
    cached = (
        f", first job from the cache {row['cached_first_job']:.1f} s"
        if "cached_first_job" in row
        else ""
    )
    batch = (
        f", batch of {row['batch']} {row['batched']:.2f} s against {row['one_by_one']:.2f} s"
        f" one by one ({row['one_by_one'] / row['batched']:.2f}x)"
        if "batch" in row
        else ""
    )
    print(
        f"{row['model']} {row['size']} px {row['variant']} ({row['dtype']}): "
        f"{row['step']:.4f} s/step ({1 / row['step']:.1f} steps/s){speedup}; load "
        f"{row['load']:.1f} s, first job {row['first_job']:.1f} s (compile {row['compile']:.1f} s)"
        f"{cached}; warm job {row['warm_job']:.2f} s; tracking {row['tracking'] * 100:+.2f} %"
        f"{batch}; phases {row['phases']}; {row['wall']:.0f} s",
        flush=True,
    )


def print_table(rows: list) -> None:
    print()
    print(
        "| model | size | variant | s/step | steps/s | vs eager | compile: cold | "
        "first job from cache | warm job | tracking | batch 8 vs one by one |"
    )
    print("|---" * 11 + "|")
    for row in rows:
        eager = next(
            (r for r in rows if r["model"] == row["model"] and r["variant"] == "eager"), None
        )
        cached = f"{row['cached_first_job']:.1f} s" if "cached_first_job" in row else "-"
        batch = f"{row['one_by_one'] / row['batched']:.2f}x" if "batch" in row else "-"
        vs = f"{eager['step'] / row['step']:.2f}x" if eager else "-"
        compiled = f"{row['compile']:.1f} s" if row["variant"] in VARIANTS[2:] else "-"
        print(
            f"| {row['model']} | {row['size']} | {row['variant']} | {row['step']:.4f} | "
            f"{1 / row['step']:.1f} | {vs} | {compiled} | {cached} | {row['warm_job']:.2f} s | "
            f"{row['tracking'] * 100:+.2f} % | {batch} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
