"""Does the demo model draw what it is asked? Prompt following, guidance, negatives, inputs.

    .venv/bin/python -m bench.demo_model [--prompts 100] [--steps 20] [--seed 7]
        [--model generator/pipelines/demo_model] [--sheet docs/demo-model-samples.png]

Prompts are drawn at random from the documented vocabulary (demo_world), not
from the training captions, with random seeds; each image goes through the
worker's own PyTorch backend at the model's size (128 px). A prompt is
followed when the median colour of the image's middle third is nearest, in
RGB, to the named shape colour and that of its outer eighth to the named
background colour. Prints one line per measure and writes a contact sheet.
"""

import argparse
import random
import tempfile
import time

from bench._setup import django_on_scratch_data, machine_line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7, help="picks the prompts and seeds")
    parser.add_argument("--model", default="demo", help="demo, or a trained folder to measure")
    parser.add_argument("--sheet", help="write a contact sheet of samples here (PNG)")
    args = parser.parse_args()
    django_on_scratch_data(tempfile.mkdtemp(prefix="sdsite-models-"))

    from generator.pipelines import create_backend

    backend = create_backend("pytorch", args.model, "cpu")
    backend.load(lambda phase: None)
    bench = Bench(backend, args.steps, random.Random(args.seed))
    print(machine_line())
    print(f"model {args.model}, {args.steps} steps, Euler, 128x128, {args.prompts} prompts\n")
    started = time.perf_counter()
    for line in bench.run(args.prompts):
        print(line, flush=True)
    print(f"\n{bench.images} images in {time.perf_counter() - started:.0f} s")
    if args.sheet:
        bench.contact_sheet(args.sheet)
        print(f"contact sheet: {args.sheet}")


class Bench:
    def __init__(self, backend, steps: int, rng: random.Random):
        self.backend = backend
        self.steps = steps
        self.rng = rng
        self.images = 0
        self.samples = []

    def generate(self, prompt, negative="", guidance=7.5, seed=None, **inputs):
        from generator.pipelines import GenerationRequest

        seed = self.rng.randrange(2**31) if seed is None else seed
        request = GenerationRequest(
            prompt, negative, self.steps, guidance, 128, 128, seed, **inputs
        )
        self.images += 1
        return self.backend.generate(request, lambda *a: True, lambda phase: None)

    def scene(self, **fixed):
        from generator.pipelines.demo import world as w

        colour = fixed.get("colour") or self.rng.choice(w.COLOURS)
        background = self.rng.choice([c for c in w.COLOURS if c != colour])
        return fixed.get("shape") or self.rng.choice(w.SHAPES), colour, background

    def followed(self, count: int, guidance: float, keep: bool = False) -> float:
        from generator.pipelines.demo import world as w

        hits = 0
        for _ in range(count):
            shape, colour, background = self.scene()
            prompt = w.caption_of(shape, colour, background)
            image = self.generate(prompt, guidance=guidance)
            read = w.read_scene(image)
            hits += read["centre"] == colour and read["border"] == background
            if keep and len(self.samples) < 16:
                self.samples.append((prompt, image))
        return hits / count

    def run(self, count: int):
        from PIL import Image

        from generator.images import blurred_mask
        from generator.pipelines.demo import world as w

        at_75 = self.followed(count, 7.5, keep=True)
        yield f"prompt followed (centre and border colours), guidance 7.5: {at_75:.0%}"
        at_1 = self.followed(count, 1.0)
        yield f"prompt followed, guidance 1.0: {at_1:.0%}"

        # Words outside the vocabulary change nothing that matters.
        hits = 0
        for _ in range(count // 2):
            shape, colour, background = self.scene()
            prompt = (
                f"masterpiece, {w.caption_of(shape, colour, background)}, trending on artstation"
            )
            read = w.read_scene(self.generate(prompt))
            hits += read["centre"] == colour and read["border"] == background
        yield f"prompt followed with words outside the vocabulary: {hits / (count // 2):.0%}"

        runs = max(10, count // 5)
        red_plain = sum(
            w.read_scene(self.generate("a circle", seed=s))["centre"] == "red" for s in range(runs)
        )
        red_negative = sum(
            w.read_scene(self.generate("a circle", "red", seed=s))["centre"] == "red"
            for s in range(runs)
        )
        yield (
            f'"a circle": red in {red_plain} of {runs} seeds; '
            f'with negative prompt "red": red in {red_negative} of {runs}'
        )

        hits = 0
        for _ in range(count // 2):
            shape, colour, background = self.scene()
            position = self.rng.choice([p for p in w.POSITIONS if p != "center"])
            image = self.generate(w.caption_of(shape, colour, background, position=position))
            hits += w.colour_at(image, position) == colour
            if len(self.samples) < 20:
                self.samples.append(
                    (w.caption_of(shape, colour, background, position=position), image)
                )
        yield f"position followed (shape colour at the named place): {hits / (count // 2):.0%}"

        shares = {}
        for size in ("small", "", "large"):
            values = []
            for _ in range(max(10, count // 5)):
                shape, colour, background = self.scene()
                image = self.generate(w.caption_of(shape, colour, background, size=size))
                values.append(w.share_of(image, colour))
            shares[size or "no size"] = sum(values) / len(values)
        yield "share of the image in the shape colour: " + ", ".join(
            f"{name} {share:.0%}" for name, share in shares.items()
        )

        # Image to image and inpainting of a red square into a blue picture.
        blue = Image.new("RGB", (128, 128), w.PALETTE["blue"])
        runs = max(10, count // 5)
        img2img = sum(
            w.read_scene(
                self.generate("a red square on a blue background", init_image=blue, strength=0.8)
            )["centre"]
            == "red"
            for _ in range(runs)
        )
        yield (
            'image to image, a blue picture + "a red square on a blue background" '
            f"(strength 0.8): red centre in {img2img} of {runs}"
        )
        mask = Image.new("L", (128, 128), 0)
        mask.paste(255, (40, 40, 88, 88))
        masked = []
        for _ in range(runs):
            image = self.generate(
                "a red square on a blue background",
                init_image=blue,
                mask_image=blurred_mask(mask, 4),
                strength=1.0,
            )
            masked.append(image)
        red = sum(w.share_of(image.crop((48, 48, 80, 80)), "red") > 0.5 for image in masked)
        yield f"inpainting a red square into a blue picture: masked area red in {red} of {runs}"
        self.samples.append(("inpainted: a red square (blue picture, centre mask)", masked[0]))

    def contact_sheet(self, path: str) -> None:
        from PIL import Image, ImageDraw

        tiles = self.samples[:20]
        columns, tile, caption = 5, 128, 30
        rows = (len(tiles) + columns - 1) // columns
        sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
        draw = ImageDraw.Draw(sheet)
        for index, (prompt, image) in enumerate(tiles):
            x, y = (index % columns) * tile, (index // columns) * (tile + caption)
            sheet.paste(image.resize((tile, tile)), (x, y))
            words = prompt.removeprefix("a ").removeprefix("an ")
            middle = len(words) // 2
            cut = words.find(" ", middle) if " " in words[middle:] else len(words)
            draw.text((x + 3, y + tile + 2), words[:cut], fill="black")
            draw.text((x + 3, y + tile + 15), words[cut:].strip(), fill="black")
        sheet.save(path)


if __name__ == "__main__":
    main()
