"""Does the demo's canny ControlNet put the shape where the control image has it?

    .venv/bin/python -m bench.controlnet_placement [--layouts 24] [--steps 20] [--seed 99]
        [--sheet docs/controlnet-samples.png]

Held-out layouts (a seed the training never used): a shape of any kind at one of the eight
off-centre positions of the demo's world (jittered, of the size a named position has), drawn
white on black as a sketch would be; its canny edges are the control image. The prompt names
the colours and the shape, never the position. Each layout is drawn twice with the same seed,
without and with `demo-canny` (canny at pixel perfect, weight 1, Balanced), through the
worker's own PyTorch backend at 128 px. A hit: the colour around the control shape's
position (`world.colour_at`) is the prompt's shape colour. Prints both hit rates, how often the
opposite position (mirrored through the centre) shows the background, and how often the
centre does (for the corner positions, whose shapes do not reach it): the demo alone centres
a shape so large that it covers every named position.
"""

import argparse
import random
import tempfile
import time

from bench._setup import django_on_scratch_data, machine_line

CORNERS = ("top left", "top right", "bottom left", "bottom right")


def layouts(count: int, rng: random.Random):
    from generator.pipelines.demo import world

    positions = [p for p in world.POSITIONS if p != "center"]
    for index in range(count):
        colour = rng.choice(world.COLOURS)
        background = rng.choice([c for c in world.COLOURS if c not in (colour,)])
        shape = rng.choice(world.SHAPES)
        position = positions[index % len(positions)]
        yield shape, colour, background, position


def opposite(position: str) -> str:
    """The named position mirrored through the centre (top left: bottom right)."""
    from generator.pipelines.demo import world

    x, y = world.POSITIONS[position]
    mirrored = (round(1 - x, 3), round(1 - y, 3))
    return next(
        n for n, (a, b) in world.POSITIONS.items() if (round(a, 3), round(b, 3)) == mirrored
    )


def sketch(shape: str, position: str, rng: random.Random, size: int = 128):
    """The control picture: the shape in white on black at the position (jittered)."""
    from PIL import Image

    from generator.pipelines.demo import world

    scene = world.Scene(shape, "white", "black", position=position)
    pixels = world.draw([scene], [world.geometry(scene, rng)], size)[0]
    array = ((pixels.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    return Image.fromarray(array)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=99, help="picks the layouts and seeds")
    parser.add_argument("--sheet", help="write a sample sheet here (PNG): control, without, with")
    args = parser.parse_args()
    django_on_scratch_data(tempfile.mkdtemp(prefix="sdsite-models-"))

    import torch

    from generator.pipelines import GenerationRequest, create_backend
    from generator.pipelines.controlnet import ControlUnit
    from generator.pipelines.demo import CONTROLNET_NAME, world

    torch.set_num_threads(1)
    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    rng = random.Random(args.seed)
    print(machine_line())
    print(f"demo + {CONTROLNET_NAME}, {args.steps} steps, Euler, 128x128, {args.layouts} layouts\n")
    hits = {"without": 0, "with": 0}
    opposite_clear = {"without": 0, "with": 0}
    centre_kept = {"without": 0, "with": 0}
    corners = 0
    rows = []
    started = time.perf_counter()
    for shape, colour, background, position in layouts(args.layouts, rng):
        control = sketch(shape, position, rng)
        prompt = world.caption_of(shape, colour, background)
        seed = rng.randrange(2**31)
        row = [control]
        for name, units in (
            ("without", ()),
            ("with", (ControlUnit(control, CONTROLNET_NAME, "canny", pixel_perfect=True),)),
        ):
            request = GenerationRequest(
                prompt=prompt, negative_prompt="", steps=args.steps, guidance_scale=7.5,
                width=128, height=128, seed=seed, controlnet=units,
            )  # fmt: skip
            image = backend.generate(request, lambda *a: True, lambda phase: None)
            row.append(image)
            hits[name] += world.colour_at(image, position) == colour
            opposite_clear[name] += world.colour_at(image, opposite(position)) == background
            if position in CORNERS:
                centre_kept[name] += world.colour_at(image, "center") == background
        corners += position in CORNERS
        rows.append(row)
    for name in ("without", "with"):
        print(
            f"{name:>7} ControlNet: shape at the control's position {hits[name]}/{args.layouts} "
            f"({100 * hits[name] / args.layouts:.0f} %), the opposite position left to the "
            f"background {opposite_clear[name]}/{args.layouts}, the centre (corner layouts) "
            f"{centre_kept[name]}/{corners}"
        )
    print(f"\n{2 * args.layouts} images in {time.perf_counter() - started:.0f} s")
    if args.sheet:
        sheet(rows[:8], args.sheet)
        print(f"sample sheet: {args.sheet}")


def sheet(rows, path: str) -> None:
    from PIL import Image

    side = 128
    grid = Image.new("RGB", (3 * side + 8, len(rows) * (side + 4)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((side, side)), (x * (side + 4), y * (side + 4)))
    grid.save(path)


if __name__ == "__main__":
    main()
