"""A model of Stable Diffusion 1.5's shape with random weights, for timing a GPU.

    .venv/bin/python -m bench.sd15_shaped FOLDER     # builds it (2 GB in float16)

Nothing can be downloaded here, and a step's time depends on the network's shape,
not on what its weights learnt: this is SD 1.5's UNet (860 M parameters: channels
320/640/1280/1280, cross-attention of width 768, 8 heads), a 12-layer CLIP text encoder
of width 768 and SD's VAE, in an ordinary diffusers folder that `SD_MODEL=FOLDER` loads
like any other. Its pictures are noise (or black: random weights overflow float16);
its seconds a step are SD 1.5's. The tokenizer is the demo model's (a few hundred
tokens), which changes nothing but the embedding table's size.
"""

import json
import subprocess
import sys
from pathlib import Path

NAME = "sd15-shaped"
ROOT = Path(__file__).resolve().parent.parent

UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
)
TEXT_ENCODER = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)


SHAPED = {NAME: "bench.sd15_shaped", "sdxl-shaped": "bench.sdxl_shaped"}
"""The shaped models a benchmark's `--model` names, and the module that builds each."""


def model_argument(model: str, models_dir: str | Path) -> str:
    """A benchmark's `--model` as SD_MODEL takes it: `sd15-shaped` (or `sdxl-shaped`) is
    built into `models_dir` on first use, by a child process, so that the benchmark's own
    never initialises CUDA (those that fork workers must not)."""
    if model not in SHAPED:
        return model
    folder = Path(models_dir) / model
    if not (folder / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", SHAPED[model], str(folder)], cwd=ROOT, check=True)
    return str(folder)


def build(folder: str | Path) -> Path:
    """Write the model to `folder` (once: an existing build is kept) and return it."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from generator.pipelines import demo

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(demo.WEIGHTS, subfolder="tokenizer")
    scheduler_config = json.loads((demo.WEIGHTS / "scheduler/scheduler_config.json").read_text())
    # Built where it is fastest (initialising 1 G parameters on a CPU takes a while).
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_ENCODER))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(build(sys.argv[1]))
