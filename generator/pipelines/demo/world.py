"""The demo model's world: scenes of one flat shape on a flat background, and their captions.

The trained demo model (see `demo_train`) learns from these pictures, and
`bench/demo_model.py` measures it against the same palette. Everything is
drawn with tensors in batches, so training never waits on a drawing library.

The vocabulary, exactly what the demo model understands:

    a [small|large] [COLOUR] SHAPE [at the POSITION] [on a COLOUR background]

- SHAPE: circle, square, triangle (or "shape": any of them)
- COLOUR: red, green, blue, yellow, white, black, orange, purple
- POSITION: top left, top right, bottom left, bottom right, top, bottom, left, right, center

Any part may be left out; a left-out part is drawn at random (the shape is
centred and covers the middle third unless the prompt says otherwise). Words
outside the vocabulary are ignored.
"""

import math
import random
from dataclasses import dataclass

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.12, 0.16), "": (0.27, 0.36), "large": (0.40, 0.46)}
"""Half the shape's extent, as a fraction of the image side."""
PLACED_SIZE = (0.18, 0.24)
"""The half-extent of a shape at a named position (not centred) and of no named size."""
POSITIONS = {
    "center": (0.5, 0.5),
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
}
WORDS = (
    *COLOURS,
    *SHAPES,
    *(word for name in POSITIONS for word in name.split()),
    "small",
    "large",
    "shape",
    "a",
    "an",
    "at",
    "the",
    "on",
    "in",
    "background",
)
NOISE_WORDS = ("photo", "of", "beautiful", "masterpiece", "best", "quality", "4k", "very", "cute")
"""Words outside the vocabulary, mixed into some captions so the model learns to ignore them."""


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str = ""
    position: str = ""

    def caption(self) -> str:
        """The full caption: every part named."""
        return caption_of(self.shape, self.colour, self.background, self.size, self.position)


def caption_of(shape="", colour="", background="", size="", position="") -> str:
    words = []
    if size:
        words.append(size)
    if colour:
        words.append(colour)
    words.append(shape or "shape")
    if position:
        words += ["at", "the", position] if position != "center" else ["in", "the", "center"]
    if background:
        words += ["on", "an" if background[0] in "aeiou" else "a", background, "background"]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(COLOURS)
    background = rng.choice([c for c in COLOURS if c != colour])
    size = rng.choice(["", "", "small", "large"])
    position = rng.choice(["", "", "", *POSITIONS]) if size != "large" else ""
    return Scene(rng.choice(SHAPES), colour, background, size, position)


def training_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of `scene` with parts left out (or none at all), sometimes with stray words.

    Leaving parts out teaches the model what each word means alone, which is what
    a negative prompt ("red") and a short prompt ("a circle") rely on.
    """
    if rng.random() < 0.1:
        return ""  # the unconditional case that classifier-free guidance needs
    keep = lambda p: rng.random() < p  # noqa: E731
    if keep(0.08):
        return rng.choice([scene.colour, scene.shape, f"{scene.background} background"])
    caption = caption_of(
        scene.shape if keep(0.85) else "",
        scene.colour if keep(0.85) else "",
        scene.background if keep(0.75) else "",
        scene.size if keep(0.9) else "",
        (scene.position or ("center" if keep(0.1) else "")) if keep(0.9) else "",
    )
    if keep(0.15):
        words = caption.split()
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(NOISE_WORDS))
        caption = " ".join(words)
    return caption


def geometry(scene: Scene, rng: random.Random) -> tuple[float, float, float]:
    """Centre x, centre y and half-extent of the shape, as fractions of the side."""
    placed = scene.position not in ("", "center")
    low, high = PLACED_SIZE if placed and not scene.size else SIZES[scene.size]
    half = rng.uniform(low, high)
    cx, cy = POSITIONS[scene.position or "center"]
    jitter = 0.04 if scene.position else 0.02
    cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
    return cx, cy, half


def draw(scenes, geometries, size: int):
    """A batch of pictures, (N, 3, size, size) floats in -1..1, with antialiased edges."""
    import torch

    n = len(scenes)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x, y = x.expand(n, size, size), y.expand(n, size, size)
    cx, cy, half = (
        torch.tensor(v, dtype=torch.float32).view(n, 1, 1) for v in zip(*geometries, strict=True)
    )
    dx, dy = x - cx, y - cy
    # A signed distance of sorts per shape (negative inside), in fractions of the side.
    circle = torch.sqrt(dx * dx + dy * dy) - half
    square = torch.maximum(dx.abs(), dy.abs()) - half * 0.9
    # An upward equilateral triangle with its centroid at (cx, cy) and circumradius 1.15 * half.
    r = half * 1.15
    edges = [
        dy - r / 2,  # the bottom edge
        *(
            -(dx * math.sin(a) + dy * math.cos(a)) * 1 - r / 2
            for a in (math.radians(60), math.radians(-60))
        ),
    ]
    triangle = torch.stack(edges).amax(dim=0)
    kinds = torch.tensor([SHAPES.index(s.shape) for s in scenes]).view(n, 1, 1)
    distance = torch.where(kinds == 0, circle, torch.where(kinds == 1, square, triangle))
    inside = (0.5 - distance * size).clamp(0, 1).unsqueeze(1)  # one pixel of antialiasing
    fg = torch.tensor([PALETTE[s.colour] for s in scenes], dtype=torch.float32).view(n, 3, 1, 1)
    bg = torch.tensor([PALETTE[s.background] for s in scenes], dtype=torch.float32).view(n, 3, 1, 1)
    pixels = bg + (fg - bg) * inside
    return pixels / 127.5 - 1


def nearest_colour(rgb) -> str:
    """The palette colour nearest to an (r, g, b) triple of 0..255 values."""
    return min(
        PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], rgb, strict=True))
    )


def _median_colour(pixels) -> tuple[int, int, int]:
    import numpy as np

    return tuple(int(v) for v in np.median(pixels.reshape(-1, 3), axis=0))


def read_scene(image) -> dict:
    """The palette colours of a picture's centre (middle third) and border (outer eighth)."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    centre = pixels[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
    edge_h, edge_w = max(1, h // 8), max(1, w // 8)
    border = np.concatenate(
        [
            pixels[:edge_h].reshape(-1, 3),
            pixels[-edge_h:].reshape(-1, 3),
            pixels[:, :edge_w].reshape(-1, 3),
            pixels[:, -edge_w:].reshape(-1, 3),
        ]
    )
    return {
        "centre": nearest_colour(_median_colour(centre)),
        "border": nearest_colour(_median_colour(border)),
    }


def colour_at(image, position: str) -> str:
    """The palette colour around a named position (a square of a tenth of the side)."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    cx, cy = POSITIONS[position]
    r = max(1, round(0.06 * w))
    x, y = round(cx * w), round(cy * h)
    return nearest_colour(_median_colour(pixels[y - r : y + r, x - r : x + r]))


def share_of(image, colour: str) -> float:
    """The share of the pixels whose nearest palette colour is `colour`."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
    palette = np.array([PALETTE[name] for name in COLOURS], dtype=np.float32).reshape(1, -1, 3)
    nearest = ((pixels - palette) ** 2).sum(axis=2).argmin(axis=1)
    return float((nearest == COLOURS.index(colour)).mean())
