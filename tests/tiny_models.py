"""Tiny randomly initialised SDXL and SD3 pipelines (SD3 without T5), built once per machine.

Real diffusers pipelines of the right classes, so a worker loads them with
`from_pretrained` and runs them as it would the real ones; their images are noise.
Kept in SD_MODELS_DIR (var/test-models) between runs, like the demo's OpenVINO export.
"""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from generator.training.demo import word_tokenizer

TEXT = 32
"""Hidden size of each tiny text encoder."""


def _text_encoder(tokenizer, *, projection: bool, width: int = TEXT, **extra):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0 if width == TEXT else width)  # the tiny SDXL and SD3 as they were
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, **extra,
    )  # fmt: skip


def _built(name: str, build) -> Path:
    folder = Path(settings.MODELS_DIR) / name
    if not (folder / "model_index.json").exists():
        staging = Path(tempfile.mkdtemp(dir=Path(settings.MODELS_DIR)))
        build().save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:  # another test process (pytest -n) finished the same build first
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / "model_index.json").exists():
                raise
    return folder


def _unet(cross_attention_dim: int, **extra):
    """A tiny UNet of SDXL's (and SD 2.x's) shape: linear attention projections."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), attention_head_dim=(2, 4), norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
        cross_attention_dim=cross_attention_dim, **extra,
    )  # fmt: skip


def _sdxl_pipeline(second: int = TEXT, **second_extra):
    """A tiny SDXL pipeline whose second text encoder is `second` wide."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = word_tokenizer()
    unet = _unet(
        TEXT + second, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=second + 6 * 8,
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=_vae(4, scaling_factor=0.13025),
        text_encoder=_text_encoder(tokenizer, projection=False),
        text_encoder_2=_text_encoder(tokenizer, projection=True, width=second, **second_extra),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            timestep_spacing="leading", steps_offset=1,
        ),
    )  # fmt: skip


def sdxl() -> Path:
    """A tiny SDXL pipeline: two text encoders, pooled embeddings, size conditioning."""
    return _built("tiny-sdxl", _sdxl_pipeline)


def sd3() -> Path:
    """A tiny SD3 pipeline without T5: a flow-matching transformer and its own scheduler."""

    def build():
        import torch
        from diffusers import (
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )

        tokenizer = word_tokenizer()
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=2 * TEXT,
            caption_projection_dim=32, pooled_projection_dim=2 * TEXT, pos_embed_max_size=32,
        )  # fmt: skip
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(4, scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=_text_encoder(tokenizer, projection=True),
            tokenizer=tokenizer,
            text_encoder_2=_text_encoder(tokenizer, projection=True),
            tokenizer_2=tokenizer,
            text_encoder_3=None,
            tokenizer_3=None,
        )

    return _built("tiny-sd3", build)


def esrgan(folder: Path, name: str = "2x-Tiny", scale: int = 2) -> Path:
    """A random-weights ESRGAN (RRDBNet: 8 filters, 1 block) in A1111's key layout, which
    spandrel recognises, saved as `<folder>/<name>.safetensors` (a few hundred kB)."""
    import torch
    from safetensors.torch import save_file

    from generator.pipelines.upscalers import import_spandrel

    import_spandrel()  # spandrel without torchvision (upscalers.py), before its modules
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
    return path


SECOND_TEXT = 48
"""Hidden size of the tiny SDXL's second text encoder for single files: its own width, as
SDXL's (1280 against CLIP-L's 768), which diffusers' single-file loader tells them apart by."""


def sdxl_single_file() -> Path:
    """A tiny SDXL pipeline whose two text encoders differ in width, for single files."""
    return _built("tiny-sdxl-single-file", lambda: _sdxl_pipeline(SECOND_TEXT, hidden_act="gelu"))


def sd2_v() -> Path:
    """A tiny SD 2.x v-prediction pipeline: an OpenCLIP-style text encoder (gelu), linear
    attention projections, a v-prediction scheduler."""

    def build():
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        tokenizer = word_tokenizer()
        unet = _unet(TEXT)
        return StableDiffusionPipeline(
            vae=_vae(4),
            text_encoder=_text_encoder(tokenizer, projection=False, hidden_act="gelu"),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction",
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip

    return _built("tiny-sd2-v", build)
