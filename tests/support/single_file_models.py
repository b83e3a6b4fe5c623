"""Tiny single-file checkpoints in the original (LDM) layout that A1111's files have, written
from diffusers pipelines: the inverse of diffusers' single-file conversion, key by key.

`ldm_state_dict(pipe)` maps a StableDiffusion (1.x or 2.x, OpenCLIP text encoder when the
text encoder's `hidden_act` is gelu) or SDXL pipeline's weights to A1111's names.
"""

import re

UNET = "model.diffusion_model."
VAE = "first_stage_model."

RESNET = [
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
]  # fmt: skip


def _resnet(rest: str) -> str:
    for new, old in RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    per = layers_per_block + 1
    for pattern, build in [
        (r"time_embedding\.linear_1\.(.*)", lambda m: f"time_embed.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(.*)", lambda m: f"time_embed.2.{m[1]}"),
        (r"add_embedding\.linear_1\.(.*)", lambda m: f"label_emb.0.0.{m[1]}"),
        (r"add_embedding\.linear_2\.(.*)", lambda m: f"label_emb.0.2.{m[1]}"),
        (r"conv_in\.(.*)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"conv_norm_out\.(.*)", lambda m: f"out.0.{m[1]}"),
        (r"conv_out\.(.*)", lambda m: f"out.2.{m[1]}"),
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda m: f"input_blocks.{per * int(m[1]) + int(m[2]) + 1}.0.{_resnet(m[3])}",
        ),
        (
            r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
            lambda m: f"input_blocks.{per * int(m[1]) + int(m[2]) + 1}.1.{m[3]}",
        ),
        (
            r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)",
            lambda m: f"input_blocks.{per * (int(m[1]) + 1)}.0.op.{m[2]}",
        ),
        (
            r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda m: f"output_blocks.{per * int(m[1]) + int(m[2])}.0.{_resnet(m[3])}",
        ),
        (
            r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
            lambda m: f"output_blocks.{per * int(m[1]) + int(m[2])}.1.{m[3]}",
        ),
        (
            r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)",
            lambda m: (
                f"output_blocks.{per * int(m[1]) + per - 1}."
                f"{2 if up_has_attention[int(m[1])] else 1}.{m[2]}"
            ),
        ),
        (r"mid_block\.attentions\.0\.(.*)", lambda m: f"middle_block.1.{m[1]}"),
        (
            r"mid_block\.resnets\.(\d+)\.(.*)",
            lambda m: f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}",
        ),
    ]:
        match = re.fullmatch(pattern, key)
        if match:
            return UNET + build(match)
    raise KeyError(key)


VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v")]
VAE_ATTENTION += [("to_out.0", "proj_out")]


def vae_key(key: str, blocks: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(
        r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key
    )
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.resnets\.",
        lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.",
        key,
    )
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
        lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.",
        key,
    )
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if "mid_block.attentions.0." in key:
        key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
        for new, old in VAE_ATTENTION:
            key = key.replace(f"attn_1.{new}.", f"attn_1.{old}.")
    return VAE + key


def open_clip_state(state: dict, prefix: str) -> dict:
    """A transformers CLIP text model's weights in OpenCLIP's names (SD 2.x, SDXL's second)."""
    import torch

    out = {}
    layers = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", key)
        if match is None:
            out[prefix + {
                "embeddings.token_embedding.weight": "token_embedding.weight",
                "embeddings.position_embedding.weight": "positional_embedding",
                "final_layer_norm.weight": "ln_final.weight",
                "final_layer_norm.bias": "ln_final.bias",
            }[key]] = value  # fmt: skip
            continue
        layer, rest = match[1], match[2]
        base = f"{prefix}transformer.resblocks.{layer}."
        projection = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if projection:
            layers.setdefault((base, projection[2]), {})[projection[1]] = value
            continue
        for new, old in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj")]:  # fmt: skip
            if rest.startswith(new + "."):
                out[base + old + rest[len(new) :]] = value
                break
        else:
            raise KeyError(rest)
    for (base, kind), parts in layers.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def ldm_vae_state_dict(vae, prefix: str = VAE) -> dict:
    """An AutoencoderKL's weights under LDM's names; `prefix=""`: as a VAE file of A1111's
    VAE folder (`encoder.down.0...`)."""
    blocks = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = prefix + vae_key(key, blocks).removeprefix(VAE)
        if ".attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[ldm] = value.contiguous()
    return out


def ldm_state_dict(pipe) -> dict:
    """The pipeline's weights under A1111's (LDM's) names, contiguous, ready for save_file."""
    unet = pipe.unet
    layers_per_block = unet.config.layers_per_block
    up_attention = [hasattr(block, "attentions") for block in unet.up_blocks]
    out = {unet_key(k, layers_per_block, up_attention): v for k, v in unet.state_dict().items()}
    out.update(ldm_vae_state_dict(pipe.vae))
    text_2 = getattr(pipe, "text_encoder_2", None)
    if text_2 is not None:
        if pipe.text_encoder is not None:
            for key, value in pipe.text_encoder.state_dict().items():
                out["conditioner.embedders.0.transformer." + key] = value
            out.update(open_clip_state(text_2.state_dict(), "conditioner.embedders.1.model."))
        else:  # the refiner: one OpenCLIP encoder
            out.update(open_clip_state(text_2.state_dict(), "conditioner.embedders.0.model."))
    elif pipe.text_encoder.config.hidden_act == "gelu":
        out.update(open_clip_state(pipe.text_encoder.state_dict(), "cond_stage_model.model."))
    else:
        for key, value in pipe.text_encoder.state_dict().items():
            out["cond_stage_model.transformer." + key] = value
    return {k: v.contiguous() for k, v in out.items() if not k.endswith("position_ids")}
