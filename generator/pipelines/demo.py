"""The demo model: a tiny Stable Diffusion pipeline with random weights, built offline.

It has every part of a real SD 1.x pipeline (CLIP tokenizer and text encoder,
conditional UNet, 8x VAE, Euler scheduler), so it goes through exactly the code
path of a real model. Its images are noise.
"""

import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_SEED = 0
TEXT_HIDDEN_SIZE = 64


def _byte_level_tokenizer():
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols and no merges.

    CLIP's real vocabulary would have to come from a hub; this one tokenizes any
    text (a token per character) and needs no download.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_demo_pipeline():
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _byte_level_tokenizer()
    torch.manual_seed(DEMO_SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN_SIZE,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 256),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        sample_size=256,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 64, 64),  # four blocks: the usual 8x downscale
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_demo_model(target: Path) -> Path:
    """Build and save the demo model at `target` unless it is already there."""
    if (target / "model_index.json").exists():
        return target
    logger.info("Building the demo model in %s (first use)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Save to a temporary folder and rename it into place, so a second worker
    # building at the same moment never loads a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        build_demo_pipeline().save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
