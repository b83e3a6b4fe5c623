"""What a ControlNet unit costs a step: seconds per step with 0, 1 and 2 units.

    .venv/bin/python -m bench.controlnet [--model demo] [--size 128] [--steps 8] [--repeats 3]
        [--threads 1]

Through the worker's own PyTorch backend on the CPU. On the demo the units use `demo-canny`
(two units: it twice, as a MultiControlNetModel); on another model (e.g. the SD 1.5-shaped
folder `python -m bench.sd15_shaped FOLDER` builds) a ControlNet of its UNet's shape with its
UNet's weights (`ControlNetModel.from_unet`), which costs what a real one of that family does.
A step's time is the median gap between step callbacks after the first, over the repeats.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench._setup import django_on_scratch_data, machine_line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    controlnets = Path(tempfile.mkdtemp(prefix="sdsite-controlnets-"))
    import os

    os.environ["SD_CONTROLNET_DIR"] = str(controlnets)
    django_on_scratch_data(tempfile.mkdtemp(prefix="sdsite-models-"))

    import torch
    from PIL import Image, ImageDraw

    from generator.pipelines import GenerationRequest, create_backend
    from generator.pipelines.controlnet import ControlUnit
    from generator.pipelines.demo import CONTROLNET_NAME

    torch.set_num_threads(args.threads)
    backend = create_backend("pytorch", args.model, "cpu")
    backend.load(lambda phase: None)
    name = CONTROLNET_NAME
    if args.model != "demo":
        from diffusers import ControlNetModel

        ControlNetModel.from_unet(backend.pipe.unet).save_pretrained(controlnets / "bench")
        name = "bench"
    control = Image.new("RGB", (args.size, args.size), "black")
    ImageDraw.Draw(control).rectangle((8, 8, args.size // 2, args.size // 2), outline="white")
    unit = ControlUnit(control, name, "none")
    print(machine_line())
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, CFG on, "
          f"{args.threads} thread(s), median of {args.repeats}\n")  # fmt: skip
    baseline = None
    for count in (0, 1, 2):
        gaps = []
        for repeat in range(args.repeats + 1):  # the first run warms up (loads the models)
            stamps = []

            def on_step(step, total, latents, stamps=stamps):
                stamps.append(time.perf_counter())
                return True

            request = GenerationRequest(
                prompt="a red square", negative_prompt="", steps=args.steps,
                guidance_scale=7.5, width=args.size, height=args.size, seed=repeat,
                controlnet=(unit,) * count,
            )  # fmt: skip
            backend.generate(request, on_step, lambda phase: None)
            if repeat:
                gaps += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        seconds = statistics.median(gaps)
        baseline = baseline or seconds
        print(f"{count} unit(s): {seconds:.4f} s a step ({seconds / baseline:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
