"""The hires fix's cost, and the tile memory bound of upscaler models.

    .venv/bin/python -m bench.hires [--runs 3] [--size 64] [--steps 8] [--image 512]

1. Seconds for a job on the demo model (PyTorch, CPU, warm pipeline, in this process):
   the first pass alone, then 2x hires fix jobs (Latent, Lanczos), their second pass
   as many steps as the first; the median of `--runs`.
2. Peak memory upscaling an `--image`-pixel square 2x with a small random-weights ESRGAN
   (RRDBNet, 8 filters, 1 block), in SD_UPSCALE_TILE tiles against one tile for the
   whole image: each in a fresh process, its peak resident memory over what it held
   before the upscale (Linux: VmHWM, reset through /proc/self/clear_refs, over VmRSS).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import ROOT, django_on_scratch_data, machine_line

MEMORY_CHILD = """
import sys, os, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
import django; django.setup()
from django.conf import settings
from PIL import Image
from generator.pipelines import upscalers
settings.SD_ESRGAN_DIR, tile, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = upscalers.model_for("2x-Bench", "cpu")
image = Image.new("RGB", (side, side), (120, 60, 200))
upscalers.run_tiled(model, Image.new("RGB", (16, 16)), "cpu", tile=16)  # warm
def status(key):
    with open("/proc/self/status") as file:
        return next(int(l.split()[1]) for l in file if l.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # the peak (VmHWM) starts again from what is held now
before = status("VmRSS")
started = time.perf_counter()
upscalers.run_tiled(model, image, "cpu", tile=tile)
seconds = time.perf_counter() - started
print((status("VmHWM") - before) / 1024, seconds)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="the first pass's side")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--image", type=int, default=512, help="the upscaled image's side")
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--models-dir", help="reuse built models from here")
    parser.add_argument("--only", choices=("seconds", "memory"), help="one of the two parts")
    args = parser.parse_args()
    django_on_scratch_data(args.models_dir or tempfile.mkdtemp(prefix="sdsite-models-"))
    print(machine_line())
    if args.only != "memory":
        hires_seconds(args)
    if args.only != "seconds":
        tile_memory(args)


def hires_seconds(args) -> None:
    from generator.pipelines import GenerationRequest, create_backend

    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    base = GenerationRequest("a red circle", "", args.steps, 7.5, args.size, args.size, 42)
    jobs = {
        "first pass alone": base,
        "2x hires, Latent": GenerationRequest(**{**base.__dict__, "enable_hr": True}),
        "2x hires, Lanczos": GenerationRequest(
            **{**base.__dict__, "enable_hr": True, "hr_upscaler": "Lanczos", "strength": 0.5}
        ),
    }
    print(f"\ndemo model, PyTorch CPU, {args.steps} steps a pass, median of {args.runs} warm runs")
    print("| job | output | s/job | vs first pass |")
    print("|---|---|---|---|")
    baseline = None
    for name, request in jobs.items():
        backend.generate(request, lambda *a: True, lambda phase: None)  # warm
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            image = backend.generate(request, lambda *a: True, lambda phase: None)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        baseline = baseline or seconds
        print(
            f"| {name} | {image.width}x{image.height} | {seconds:.2f} | "
            f"{seconds / baseline:.2f}x |",
            flush=True,
        )


def tile_memory(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="sdsite-esrgan-"))
    build_esrgan(folder / "2x-Bench.safetensors")
    print(f"\nupscaling {args.image}x{args.image} 2x, tiny ESRGAN (8 filters, 1 block), CPU")
    print("| tiling | peak memory over before (MiB) | seconds |")
    print("|---|---|---|")
    for label, tile in ((f"tiles of {args.tile} (+8 overlap)", args.tile), ("one tile", 10**6)):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(folder), str(tile), str(args.image)],
            capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        peak, seconds = (float(x) for x in out.stdout.split()[-2:])
        print(f"| {label} | {peak:.0f} | {seconds:.2f} |", flush=True)


def build_esrgan(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from generator.pipelines.upscalers import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


if __name__ == "__main__":
    main()
