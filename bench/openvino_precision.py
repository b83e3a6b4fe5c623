"""OpenVINO weight precisions side by side: fp32, fp16 and int8 on the demo model.

    .venv/bin/python -m bench.openvino_precision [--sizes 256 512] [--steps 20] [--runs 3]

Per precision and size: the IR's weight size, the export time, seconds per step
(median over warm runs) and how far the image is from fp32's at the same seed
and prompt (mean absolute pixel difference, 0..255, over the runs' seeds).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench._setup import django_on_scratch_data, machine_line

PRECISIONS = ("fp32", "fp16", "int8")
PROMPT = "a red circle on a blue background"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="warm runs (seeds) per size")
    args = parser.parse_args()
    django_on_scratch_data(tempfile.mkdtemp(prefix="sdsite-models-"))
    import numpy as np
    from django.conf import settings

    from generator.pipelines import GenerationRequest, create_backend

    print(machine_line())
    print(f"demo model, OpenVINO, {args.steps} steps, median of {args.runs} warm runs\n")
    print("| precision | weights | export | size | s/step | vs fp32 (mean abs pixel diff) |")
    print("|---" * 6 + "|")
    reference = {}
    for precision in PRECISIONS:
        settings.SD_OPENVINO_PRECISION = precision
        backend = create_backend("openvino", "demo", "cpu")
        started = time.perf_counter()
        backend.load(lambda phase: None)
        export = f"{time.perf_counter() - started:.1f} s"
        weights = sum(p.stat().st_size for p in Path(backend.ir_dir).rglob("*.bin")) / 2**20
        for size in args.sizes:
            steps, differences = [], []
            for seed in range(-1, args.runs):  # seed -1: the warm-up, compiling this size
                stamps = []

                def on_step(step, total, latents=None, stamps=stamps):
                    stamps.append(time.perf_counter())
                    return True

                request = GenerationRequest(PROMPT, "", args.steps, 7.5, size, size, max(seed, 0))
                image = backend.generate(request, on_step, lambda phase: None)
                if seed < 0:
                    continue
                steps += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
                pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
                reference.setdefault((size, seed), pixels)
                differences.append(np.abs(pixels - reference[(size, seed)]).mean())
            print(
                f"| {precision} | {weights:.1f} MB | {export} | {size}x{size} | "
                f"{statistics.median(steps):.4f} | {statistics.mean(differences):.2f} |",
                flush=True,
            )
            export = "(above)"


if __name__ == "__main__":
    main()
