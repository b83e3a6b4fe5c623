"""Image to image and inpainting against text to image: seconds per step, both backends.

    .venv/bin/python -m bench.image_modes [--runs 5] [--sizes 256 512] [--steps 20]

Runs the demo model's warm pipelines in this process (no database): text to
image, image to image at strength 1.0 (so the same number of steps) and
inpainting (a centred square mask, blur 4), and prints the median seconds per
step and per job of each, and their ratio to text to image.
"""

import argparse
import statistics
import tempfile
import time

from bench._setup import django_on_scratch_data, machine_line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models-dir", help="reuse built models from here")
    args = parser.parse_args()
    django_on_scratch_data(args.models_dir or tempfile.mkdtemp(prefix="sdsite-models-"))

    from generator.pipelines import create_backend

    print(machine_line())
    print(f"demo model, {args.steps} steps, strength 1.0, median of {args.runs} warm runs\n")
    print("| backend | size | mode | s/step | s/job | vs text to image |")
    print("|---|---|---|---|---|---|")
    for name in ("pytorch", "openvino"):
        backend = create_backend(name, "demo", "cpu")
        backend.load(lambda phase: None)
        for size in args.sizes:
            baseline = None
            for mode in ("txt2img", "img2img", "inpaint"):
                per_step, per_job = measure(backend, mode, size, args)
                baseline = baseline or per_step
                print(
                    f"| {name} | {size}x{size} | {mode} | {per_step:.3f} | {per_job:.2f} "
                    f"| {per_step / baseline:.2f}x |",
                    flush=True,
                )


def request_for(mode: str, size: int, steps: int):
    import numpy as np
    from PIL import Image

    from generator.images import blurred_mask
    from generator.pipelines import GenerationRequest

    inputs = {}
    if mode != "txt2img":
        pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        inputs["init_image"] = Image.fromarray(pixels)
        inputs["strength"] = 1.0
    if mode == "inpaint":
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        inputs["mask_image"] = blurred_mask(mask, 4)
    return GenerationRequest("a red square", "", steps, 7.5, size, size, 42, **inputs)


def record(marks: list) -> bool:
    marks.append(time.perf_counter())
    return True


def measure(backend, mode, size, args) -> tuple[float, float]:
    request = request_for(mode, size, args.steps)
    backend.generate(request, lambda *a: True, lambda phase: None)  # warm-up, compiles
    per_step, per_job = [], []
    for _ in range(args.runs):
        marks = []
        started = time.perf_counter()
        backend.generate(request, lambda *a, marks=marks: record(marks), lambda p: None)
        per_job.append(time.perf_counter() - started)
        per_step.append((marks[-1] - marks[0]) / (len(marks) - 1))
    return statistics.median(per_step), statistics.median(per_job)


if __name__ == "__main__":
    main()
