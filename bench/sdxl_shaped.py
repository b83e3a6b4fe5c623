"""A model of Stable Diffusion XL base's shape with random weights, for timing a GPU.

    .venv/bin/python -m bench.sdxl_shaped FOLDER     # builds it (7 GB in float16)

As `bench.sd15_shaped` for SD 1.5: SDXL base 1.0's UNet (2.57 G parameters: channels
320/640/1280, 1/2/10 transformer layers, cross-attention of width 2048, the text-and-time
added embedding), its two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, 1280 wide, 32
layers, with a projection) and its VAE (SD's, scaled by 0.13025), from the published
configs of stabilityai/stable-diffusion-xl-base-1.0 written out below. An ordinary
diffusers folder that `SD_MODEL=FOLDER` loads as SDXL; its pictures are noise, its seconds
a step SDXL's. Both tokenizers are the demo model's, which changes only the embedding
tables' size.
"""

import json
import sys
from pathlib import Path

from bench.sd15_shaped import TEXT_ENCODER, VAE

NAME = "sdxl-shaped"
ROOT = Path(__file__).resolve().parent.parent

UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
TEXT_ENCODER_2 = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)


def build(folder: str | Path) -> Path:
    """Write the model to `folder` (once: an existing build is kept) and return it."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from generator.pipelines import demo

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(demo.WEIGHTS, subfolder="tokenizer")
    scheduler_config = json.loads((demo.WEIGHTS / "scheduler/scheduler_config.json").read_text())
    vocab_size = len(tokenizer)
    # Built where it is fastest, in float16 from the start (3.5 G parameters).
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel(**UNET).half()
        vae = AutoencoderKL(**SDXL_VAE).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **TEXT_ENCODER)).half()
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(vocab_size=vocab_size, **TEXT_ENCODER_2)
        ).half()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
    )
    pipe.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(build(sys.argv[1]))
