"""PyTorch against OpenVINO on the demo model, and the cost of sdsite's progress tracking.

    .venv/bin/python -m bench.backends [--runs 5] [--sizes 256 512] [--steps 20]
    .venv/bin/python -m bench.backends --device cuda [--model sd15-shaped]

Prints, per backend and size: seconds per step (median over runs), first-job cost
(building or exporting, compiling), a warm job's time to its first step, the
whole-job overhead of progress tracking as the worker does it (a writer thread)
compared with the same pipeline call without a callback, in a few runs (bench.
progress_overhead measures it with intervals), and the share of the job spent in
the step callback itself.

`--device cuda` measures PyTorch on the GPU (float16 as the worker runs models there,
float32 for the demo; OpenVINO's GPU plugin is for Intel GPUs and is left out).
`--model` takes any model the worker takes, or `sd15-shaped`: SD 1.5's network with
random weights (`bench.sd15_shaped`), whose steps take as long as SD 1.5's.
"""

import argparse
import statistics
import tempfile
import time

from bench._setup import django_on_scratch_data, machine_line
from bench.sd15_shaped import model_argument


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (SD_DEVICE)")
    parser.add_argument("--model", default="demo", help="demo, sd15-shaped, a folder or hub id")
    parser.add_argument("--backends", nargs="+", help="default: pytorch and, on a CPU, openvino")
    parser.add_argument(
        "--models-dir",
        help="reuse built models from here (default: a fresh folder, so "
        "first-job costs include building the demo model and the OpenVINO export)",
    )
    args = parser.parse_args()
    models_dir = args.models_dir or tempfile.mkdtemp(prefix="sdsite-models-")
    django_on_scratch_data(models_dir)
    model = model_argument(args.model, models_dir)
    on_cpu = args.device == "cpu"
    backends = args.backends or (["pytorch", "openvino"] if on_cpu else ["pytorch"])

    print(machine_line(args.device))
    print(f"{args.model} model, {args.steps} steps, guidance 7.5, median of {args.runs} warm runs")
    rows = []
    for backend_name in backends:
        backend, load_seconds = load_backend(backend_name, model, args.device)
        if unet := getattr(getattr(backend, "pipe", None), "unet", None):
            print(f"{backend_name} on {args.device}: {unet.dtype}")
        for size in args.sizes:
            rows.append(measure(backend, backend_name, size, args, load_seconds))
            load_seconds = 0.0  # the model is loaded once per backend
    print_table(rows, args.sizes)


def load_backend(name, model, device):
    from generator.pipelines import create_backend

    backend = create_backend(name, model, device)
    started = time.perf_counter()
    backend.load(lambda phase: None)
    return backend, time.perf_counter() - started


def measure(backend, name, size, args, load_seconds):
    from generator.pipelines import GenerationRequest

    request = GenerationRequest("a lighthouse at dawn", "", args.steps, 7.5, size, size, 42)
    started = time.perf_counter()
    backend.pipeline_for(request, lambda phase: None)
    compile_seconds = time.perf_counter() - started
    backend.generate(request, lambda step, total, latents: True, lambda phase: None)  # warm-up

    step_seconds, bare, tracked, first_step, writing = [], [], [], [], []
    for run in range(args.runs):
        request = GenerationRequest("a lighthouse at dawn", "", args.steps, 7.5, size, size, run)
        # Alternate which call goes first, so warm caches favour neither.
        if run % 2:
            seconds, to_first_step, in_writes = timed_tracked_job(backend, name, request)
            bare.append(timed_bare_call(backend, request, step_seconds))
        else:
            bare.append(timed_bare_call(backend, request, step_seconds))
            seconds, to_first_step, in_writes = timed_tracked_job(backend, name, request)
        tracked.append(seconds)
        first_step.append(to_first_step)
        writing.append(in_writes / seconds)
    median_step = statistics.median(step_seconds)
    return {
        "backend": name,
        "size": size,
        "step": median_step,
        "load": load_seconds,
        "compile": compile_seconds,
        "warm_job": statistics.median(tracked),
        "first_step_ratio": statistics.median(first_step) / median_step,
        "overhead": statistics.median(tracked) / statistics.median(bare) - 1,
        "in_writes": statistics.median(writing),
    }


def timed_bare_call(backend, request, step_seconds):
    """The pipeline call alone; a timing-only callback gives the per-step times."""
    pipe = backend.pipeline_for(request, lambda phase: None)
    stamps = []

    def stamp(pipe, index, timestep, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    started = time.perf_counter()
    pipe(
        prompt=request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        width=request.width,
        height=request.height,
        generator=backend.random_generator(request.seed),
        callback_on_step_end=stamp,
    )
    seconds = time.perf_counter() - started
    step_seconds.extend(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return seconds


def timed_tracked_job(backend, name, request):
    """The same call as the worker makes it: a claimed session, its steps handed to the
    job's progress writer thread (step times, the ETA, the live previews)."""
    from django.conf import settings

    from generator.services import session_create
    from generator.worker.claims import claim_next
    from generator.worker.step_reporter import ProgressWriter, StepReporter

    session = session_create(
        prompt=request.prompt,
        steps=request.steps,
        width=request.width,
        height=request.height,
        seed=request.seed,
        backend=name,
    )
    job = claim_next("bench")
    assert job.session.pk == session.pk
    first_step_at = []
    in_writes = 0.0
    writer = ProgressWriter(job, interval=settings.SD_STEP_WRITE_INTERVAL)
    writer.start()
    report = StepReporter(
        job,
        previews=settings.SD_PREVIEWS,
        preview_interval=settings.SD_PREVIEW_INTERVAL,
        writer=writer,
    )

    def on_step(step, total, latents=None):
        nonlocal in_writes
        entered = time.perf_counter()
        if not first_step_at:
            first_step_at.append(entered)
        keep_going = report(step, total, latents)
        in_writes += time.perf_counter() - entered
        return keep_going

    started = time.perf_counter()
    backend.generate(request, on_step, job.record_phase, on_start=report.start)
    seconds = time.perf_counter() - started
    writer.close()
    job.fail("benchmark run")  # finish the row; the image is not needed
    return seconds, first_step_at[0] - started, in_writes


def print_table(rows, sizes):
    print()
    header = (
        "| backend | size | s/step | first job: load+export | compile | warm job | "
        "time to 1st step / step | tracking overhead (A/B) | time in the step callback |"
    )
    print(header)
    print("|---" * 9 + "|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['size']}x{r['size']} | {r['step']:.4f} | {r['load']:.2f} s | "
            f"{r['compile']:.2f} s | {r['warm_job']:.2f} s | {r['first_step_ratio']:.2f}x | "
            f"{r['overhead'] * 100:+.2f} % | {r['in_writes'] * 100:.2f} % |"
        )
    print()
    by = {(r["backend"], r["size"]): r for r in rows}
    if {"pytorch", "openvino"} - {r["backend"] for r in rows}:
        return
    for size in sizes:
        ratio = by[("pytorch", size)]["step"] / by[("openvino", size)]["step"]
        print(f"{size}x{size}: OpenVINO is {ratio:.2f}x faster per step than PyTorch")


if __name__ == "__main__":
    main()
