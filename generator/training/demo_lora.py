"""Train the demo LoRA "demo-swap" (see generator/pipelines/demo/lora.py for what it does).

python manage.py train_demo --lora
"""

import dataclasses
from pathlib import Path

from ..pipelines.demo import world
from ..pipelines.demo.lora import BASE_MODEL, LORAS, NAME

SEED = 4321


def swapped(scene: world.Scene) -> world.Scene:
    return dataclasses.replace(scene, colour=scene.background, background=scene.colour)


def train_lora(steps: int = 600, batch: int = 16, lr: float = 1e-3, report=None) -> Path:
    import torch
    import torch.nn.functional as F
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from .demo import IMAGE_SIZE, frozen_start, scheduler

    report = report or (lambda *a, **k: None)
    rng, generator, tokenizer, (text_encoder, unet, vae) = frozen_start(SEED)
    unet.add_adapter(
        LoraConfig(
            r=8,
            lora_alpha=8,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    alphas = scheduler().alphas_cumprod.float()
    unet.train()
    for step in range(steps):
        scenes = [world.random_scene(rng) for _ in range(batch)]
        geometries = [world.geometry(scene, rng) for scene in scenes]
        pixels = world.draw([swapped(s) for s in scenes], geometries, IMAGE_SIZE)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            ids = tokenizer(
                [world.training_caption(scene, rng) for scene in scenes],
                padding="max_length", max_length=77, truncation=True, return_tensors="pt",
            ).input_ids  # fmt: skip
            context = text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        predicted = unet(a.sqrt() * latents + (1 - a).sqrt() * noise, t, context).sample
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            report("lora", step, steps, loss=loss.item())

    LORAS.mkdir(exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        LORAS, unet_lora_layers=layers, weight_name=f"{NAME}.safetensors"
    )
    # fp16, with the base model named in the header, as kohya's tools do.
    path = LORAS / f"{NAME}.safetensors"
    tensors = {key: value.half() for key, value in load_file(path).items()}
    save_file(tensors, path, metadata={"ss_base_model_version": BASE_MODEL, "format": "pt"})
    return path
