"""What speeds up PyTorch on this CPU: channels_last, bfloat16 autocast, torch.compile, threads.

    .venv/bin/python -m bench.torch_cpu [--sizes 256 512] [--steps 20] [--runs 3]

Each option is measured on the demo model against the plain float32 pipeline the
worker runs (`SD_BACKEND=pytorch`, `SD_DEVICE=cpu`): seconds a step (median over
warm runs), its first-job cost (torch.compile's compile), and the mean absolute
pixel difference (0..255) of its image from the plain one at the same seed.
"""

import argparse
import contextlib
import statistics
import time

from bench._setup import ROOT, django_on_scratch_data, machine_line


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_pipe():
    import torch
    from diffusers import AutoPipelineForText2Image

    from generator.pipelines.sources import resolve_model

    pipe = AutoPipelineForText2Image.from_pretrained(
        resolve_model("demo"), torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, size: int, steps: int, seed: int, autocast: bool):
    """(image, seconds a step) of one call, steps timed from the first callback."""
    import numpy as np
    import torch

    stamps = []

    def stamp(pipe, index, timestep, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), context:
        image = pipe(
            "a red circle on a blue background",
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=stamp,
        ).images[0]
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return np.asarray(image, dtype=np.float64), per_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="options to leave out, by their first word"
    )
    args = parser.parse_args()
    django_on_scratch_data(str(ROOT / "var" / "test-models"))
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    flags = cpu_flags()
    print(machine_line())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 in hardware: "
        f"{'yes' if flags & {'avx512_bf16', 'amx_bf16'} else 'no'}; "
        f"demo model, {args.steps} steps, median of {args.runs} warm runs"
    )

    def plain(pipe):
        return pipe

    def channels_last(pipe):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        return pipe

    def compiled(pipe):
        pipe.unet = torch.compile(pipe.unet)
        return pipe

    options = [
        ("float32 (as shipped)", plain, False, None),
        ("channels_last", channels_last, False, None),
        ("bfloat16 autocast", plain, True, None),
        ("torch.compile (UNet)", compiled, False, None),
        ("1 thread", plain, False, 1),
    ]
    threads = torch.get_num_threads()
    print(f"{'option':<22} {'size':>5} {'s/step':>8} {'vs plain':>9} {'first job':>10} {'diff':>6}")
    reference = {}
    for name, prepare, autocast, thread_count in options:
        if name.split()[0] in args.skip:
            continue
        torch.set_num_threads(thread_count or threads)
        pipe = prepare(load_pipe())
        for size in args.sizes:
            started = time.perf_counter()
            image, _ = run(pipe, size, args.steps, 0, autocast)  # the first job, compile included
            first = time.perf_counter() - started
            seconds = statistics.median(
                run(pipe, size, args.steps, 1 + n, autocast)[1] for n in range(args.runs)
            )
            if name.startswith("float32"):
                reference[size] = (image, seconds)
            plain_image, plain_seconds = reference[size]
            difference = abs(image - plain_image).mean()
            print(
                f"{name:<22} {size:>5} {seconds:>8.4f} {seconds / plain_seconds:>8.2f}x "
                f"{first:>9.1f}s {difference:>6.2f}",
                flush=True,
            )
        del pipe
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
