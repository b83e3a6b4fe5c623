"""Writes generator/pipelines/configs/<family>/: the diffusers configs that single-file
checkpoints load with, offline (the shapes of SD 1.5, SD 2.1, SDXL base and refiner, and their
inpainting variants, as their diffusers repositories on the Hugging Face Hub hold them).

    .venv/bin/python -m bench.single_file_configs

Only JSON is written (the networks are built on the meta device: no weights). The CLIP
tokenizer's vocabulary is built at load from the shipped `bpe_simple_vocab_16e6.txt.gz`
(generator/pipelines/single_file.py).
"""

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "generator" / "pipelines" / "configs"

CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
OPEN_CLIP_H = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    projection_dim=512, hidden_act="gelu",
)  # fmt: skip
OPEN_CLIP_BIG_G = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    projection_dim=1280, hidden_act="gelu",
)  # fmt: skip
SD_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)  # fmt: skip
SD1_UNET = dict(SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD2_UNET = dict(
    SD_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)  # fmt: skip
SDXL_UNET = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)  # fmt: skip
REFINER_UNET = dict(
    sample_size=128, block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24),
    cross_attention_dim=1280, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560,
)  # fmt: skip
VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="leading",
)  # fmt: skip

# family: (pipeline, unet, vae extras, text encoders [(part, class, config, pad token)],
#          prediction type)
FAMILIES = {
    "sd1": ("StableDiffusionPipeline", SD1_UNET, dict(sample_size=512),
            [("", "CLIPTextModel", CLIP_L, "<|endoftext|>")], "epsilon"),
    "sd1-inpainting": ("StableDiffusionInpaintPipeline", dict(SD1_UNET, in_channels=9),
                       dict(sample_size=512),
                       [("", "CLIPTextModel", CLIP_L, "<|endoftext|>")], "epsilon"),
    "sd2-v": ("StableDiffusionPipeline", SD2_UNET, dict(sample_size=768),
              [("", "CLIPTextModel", OPEN_CLIP_H, "!")], "v_prediction"),
    "sd2-inpainting": ("StableDiffusionInpaintPipeline",
                       dict(SD2_UNET, in_channels=9, sample_size=64, upcast_attention=False),
                       dict(sample_size=512), [("", "CLIPTextModel", OPEN_CLIP_H, "!")],
                       "epsilon"),
    "sdxl": ("StableDiffusionXLPipeline", SDXL_UNET,
             dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
             [("", "CLIPTextModel", CLIP_L, "<|endoftext|>"),
              ("_2", "CLIPTextModelWithProjection", OPEN_CLIP_BIG_G, "!")], "epsilon"),
    "sdxl-inpainting": ("StableDiffusionXLInpaintPipeline", dict(SDXL_UNET, in_channels=9),
                        dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                        [("", "CLIPTextModel", CLIP_L, "<|endoftext|>"),
                         ("_2", "CLIPTextModelWithProjection", OPEN_CLIP_BIG_G, "!")],
                        "epsilon"),
    "sdxl-refiner": ("StableDiffusionXLImg2ImgPipeline", REFINER_UNET,
                     dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                     [("_2", "CLIPTextModelWithProjection", OPEN_CLIP_BIG_G, "!")], "epsilon"),
}  # fmt: skip


def write(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def build_family(family: str) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    pipeline, unet, vae, encoders, prediction = FAMILIES[family]
    folder = CONFIGS / family
    shutil.rmtree(folder, ignore_errors=True)
    with init_empty_weights():
        UNet2DConditionModel(**unet).save_config(folder / "unet")
        AutoencoderKL(**VAE, **vae).save_config(folder / "vae")
    EulerDiscreteScheduler(**SCHEDULER, prediction_type=prediction).save_config(
        folder / "scheduler"
    )
    index = {"_class_name": pipeline, "_diffusers_version": "0.37.1"}
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"])
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    if pipeline.startswith("StableDiffusionXL"):
        index.update(text_encoder=[None, None], tokenizer=[None, None])
        index.update(text_encoder_2=[None, None], tokenizer_2=[None, None])
        index["force_zeros_for_empty_prompt"] = family != "sdxl-refiner"
        if family != "sdxl":
            index["requires_aesthetics_score"] = family == "sdxl-refiner"
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
        index["requires_safety_checker"] = False
    index["image_encoder"] = [None, None]
    for suffix, cls, text, pad in encoders:
        index[f"text_encoder{suffix}"] = ["transformers", cls]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        config = CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=1, architectures=[cls], **text,
        ).to_dict()  # fmt: skip
        config.pop("transformers_version", None)
        write(folder / f"text_encoder{suffix}" / "config.json", config)
        tokenizer = {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": pad, "do_lower_case": True,
        }  # fmt: skip
        write(folder / f"tokenizer{suffix}" / "tokenizer_config.json", tokenizer)
    write(folder / "model_index.json", index)


def main() -> None:
    for family in FAMILIES:
        build_family(family)
        print(CONFIGS / family)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
