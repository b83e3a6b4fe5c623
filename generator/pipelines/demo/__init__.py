"""The demo model: a tiny Stable Diffusion model trained by this project, shipped in the repository.

It draws one flat shape on a flat background from prompts in a small vocabulary
(`world.py` says exactly which), so a fresh machine shows a real, prompt-following
picture within seconds of `make run`, with no download. It is an ordinary
diffusers folder (CLIP text encoder on a word-level tokenizer, conditional UNet,
8x VAE, Euler scheduler), so every feature runs on it unchanged: samplers,
image to image, inpainting, OpenVINO export, live previews.

`manage.py train_demo` (`generator/training/demo.py`) trains it again from scratch on the scenes
`world.py` draws; `bench/demo_model.py` measures how well it follows prompts.
"""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The shipped model: fp16 safetensors, about 8 MB."""
SIZE = 128
"""The size it was trained at, and the default size of its images."""


def vocabulary() -> dict:
    """What the demo understands, for the page's notice (from `world`, never copied)."""
    from . import world

    return {
        "size": SIZE,
        "shapes": world.SHAPES,
        "colours": world.COLOURS,
        "positions": [p for p in world.POSITIONS if p != "center"] + ["in the center"],
        "example": world.caption_of("circle", "red", "blue"),
    }


CONTROLNET = Path(__file__).resolve().parent / "controlnet"
"""The demo canny ControlNet (`manage.py train_demo --controlnet`): a diffusers folder, fp16."""
CONTROLNET_NAME = "demo-canny"
"""Its name in the ControlNet model lists: always listed, for the demo model."""
