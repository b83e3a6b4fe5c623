"""Train the demo canny ControlNet "demo-canny" for the demo model (see
generator/pipelines/demo/__init__.py: CONTROLNET).

    python manage.py train_demo --controlnet [--controlnet-steps N]

The ControlNet starts as a copy of the demo UNet's encoder (`ControlNetModel.from_unet`, with
a small conditioning encoder) and learns, the demo model frozen, to draw the shape whose
canny edges it is given wherever they are: shapes of every size anywhere in the picture,
off-centre too, where the demo alone draws a shape only at a position its prompt names. The
captions name the colours and the shape, never the position or the size: those come from the
edges. Seeded; about ten minutes on one busy CPU core (it stops at `seconds` and saves).
"""

import random
import time

from ..pipelines import preprocessors
from ..pipelines.demo import CONTROLNET, SIZE, world

SEED = 2468


def random_layout(rng: random.Random) -> tuple[world.Scene, tuple[float, float, float]]:
    """A scene and its geometry: any shape, any size, centred anywhere it fits."""
    colour = rng.choice(world.COLOURS)
    background = rng.choice([c for c in world.COLOURS if c != colour])
    scene = world.Scene(rng.choice(world.SHAPES), colour, background)
    half = rng.uniform(0.1, 0.32)
    margin = half * 1.15 + 0.02
    cx, cy = (rng.uniform(margin, 1 - margin) for _ in range(2))
    return scene, (cx, cy, half)


def caption(scene: world.Scene, rng: random.Random) -> str:
    """Colours and shape, parts left out sometimes (one in ten empty, for guidance)."""
    if rng.random() < 0.1:
        return ""
    return world.caption_of(
        scene.shape if rng.random() < 0.8 else "",
        scene.colour if rng.random() < 0.9 else "",
        scene.background if rng.random() < 0.8 else "",
    )


def canny_of(pixels):
    """The canny control images (N, 3, H, W) in 0..1 of pictures (N, 3, H, W) in -1..1."""
    import numpy
    import torch
    from PIL import Image

    rgb = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    edges = [numpy.asarray(preprocessors.run(Image.fromarray(each), "canny", None)) for each in rgb]
    return torch.from_numpy(numpy.stack(edges)).permute(0, 3, 1, 2).float() / 255


def train_controlnet(
    steps: int = 450, batch: int = 12, lr: float = 1e-3, seconds: float = 600, report=None
):
    """Train and save it; it stops early (and saves) past `seconds` of wall time."""
    import torch
    import torch.nn.functional as F
    from diffusers import ControlNetModel

    from .demo import frozen_start, scheduler, set_cosine_rate

    report = report or (lambda *a, **k: None)
    rng, generator, tokenizer, (text_encoder, unet, vae) = frozen_start(SEED)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32, 64, 64)
    )
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.0)
    alphas = scheduler().alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=5.0) / snr
    controlnet.train()
    started = time.monotonic()
    for step in range(steps):
        set_cosine_rate(optimizer, lr, step, steps, warmup=20)
        layouts = [random_layout(rng) for _ in range(batch)]
        scenes = [scene for scene, _ in layouts]
        # Mostly at half the size: a quarter of the cost, and a ControlNet is convolutional,
        # so "the shape goes where its edges are" carries over to the full size.
        size = SIZE if rng.random() < 0.15 else SIZE // 2
        pixels = world.draw(scenes, [g for _, g in layouts], size)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            ids = tokenizer(
                [caption(scene, rng) for scene in scenes],
                padding="max_length", max_length=77, truncation=True, return_tensors="pt",
            ).input_ids  # fmt: skip
            context = text_encoder(ids)[0]
        control = canny_of(pixels)
        noise = torch.randn(latents.shape, generator=generator)
        # Where the shape goes is decided in the noisiest steps: draw them more often.
        t = (torch.rand(batch, generator=generator) ** 0.6 * 1000).long().clamp(max=999)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        down, mid = controlnet(
            noisy, t, encoder_hidden_states=context, controlnet_cond=control, return_dict=False
        )
        predicted = unet(
            noisy,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3)) * weights[t]
        loss = loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        elapsed = time.monotonic() - started
        if step % 25 == 0 or step == steps - 1:
            report("controlnet", step, steps, loss=loss.item(), s=elapsed)
        if step and step % 50 == 0:
            save(controlnet)  # a run cut short keeps what it learnt
        if elapsed > seconds:
            report("stopped at the time limit", step, steps, s=elapsed)
            break
    save(controlnet)
    return CONTROLNET


def save(controlnet) -> None:
    """fp16 safetensors in a diffusers folder, from a copy (training goes on in fp32)."""
    import copy

    import torch

    copy.deepcopy(controlnet).eval().to(torch.float16).save_pretrained(
        CONTROLNET, safe_serialization=True
    )
