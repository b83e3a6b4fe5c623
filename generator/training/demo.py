"""Train the demo model on the scenes of `world.py`, on a CPU, reproducibly.

    python manage.py train_demo [--out FOLDER] [--vae-steps N] [--unet-steps N]

Stages, all seeded: the 8x VAE learns to encode flat shapes (and to keep its
latents readable by the live previews' fixed latent-to-RGB map); then the text
encoder and the UNet learn to denoise those latents from the captions, with
captions left out one time in ten for classifier-free guidance (two passes);
last, the decoder alone learns whole scenes back from their latents. The
result is an ordinary diffusers Stable Diffusion folder, saved in fp16.
"""

import copy
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..pipelines.demo import SIZE, WEIGHTS, world
from ..pipelines.previews import SD_LATENT_RGB

logger = logging.getLogger(__name__)

SEED = 1234
IMAGE_SIZE = SIZE
"""The model's own size: what the page proposes when no size is given."""
TEXT_HIDDEN_SIZE = 64


@dataclass
class Plan:
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 32
    dataset: int = 12000
    """Scenes encoded once by the trained VAE, at the model's size."""
    half_dataset: int = 5000
    """And at half the model's size."""
    half_share: float = 0.3
    """The share of UNet steps that learn from the half-size scenes, so small images work too."""
    unet_steps: int = 3600
    unet_batch: int = 64
    lr: float = 1.4e-3
    refine_steps: int = 4000
    """A second pass over fresh scenes, from the saved first-pass weights, at a lower rate."""
    refine_lr: float = 3e-4
    refine_rounds: int = 0
    """How many such passes, each over scenes of its own (none by default: a batch of 64
    in one pass follows prompts as well within the hour; see docs/demo-model.md)."""
    decoder_steps: int = 300
    """The last pass: the decoder alone, on whole scenes' latents (see `tune_decoder`)."""
    decoder_batch: int = 8
    decoder_lr: float = 3e-4
    decoder_noise: float = 0.1
    """Noise added to the latents the decoder learns from, as a share of their spread."""
    out: Path = WEIGHTS


def word_tokenizer():
    """A CLIP tokenizer whose words are the demo's vocabulary; other words split into letters.

    Its vocabulary is the 256 byte symbols (so any text tokenizes), plus one token
    per word of `world.WORDS`, reached through BPE merges built for them.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []
    for word in sorted(set(world.WORDS)):
        # Add merges (each at the lowest priority, so earlier words keep theirs)
        # until BPE turns this word into one token.
        while len(pieces := _bpe([*word[:-1], word[-1] + "</w>"], merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            tokens.append(pieces[0] + pieces[1])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    for word in world.WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    return tokenizer


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """What byte-pair encoding with `merges` (in priority order) makes of `pieces`."""
    rank = {pair: index for index, pair in enumerate(merges)}
    while len(pieces) > 1:
        pair = min(zip(pieces, pieces[1:], strict=False), key=lambda p: rank.get(p, len(rank)))
        if pair not in rank:
            break
        i = next(i for i in range(len(pieces) - 1) if (pieces[i], pieces[i + 1]) == pair)
        pieces = [*pieces[:i], pair[0] + pair[1], *pieces[i + 2 :]]
    return pieces


def build_parts(tokenizer):
    """Untrained text encoder, UNet and VAE of the demo's shape."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        # The prompt reaches the UNet at 1/16 and 1/32 of the image size: enough for
        # flat colours and where a shape sits, at a third of the cost of attention
        # at 1/8.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64, 64),  # four blocks: the usual 8x downscale
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16,
        scaling_factor=1.0,
    )
    return text_encoder, unet, vae


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )


def scenes(rng: random.Random, count: int, size: int):
    batch = [world.random_scene(rng) for _ in range(count)]
    pixels = world.draw(batch, [world.geometry(s, rng) for s in batch], size)
    return batch, pixels


def latent_rgb(latents):
    """What the live previews show of `latents`: the fixed map, in -1..1."""
    import torch

    return torch.einsum("nchw,cr->nrhw", latents, torch.tensor(SD_LATENT_RGB))


def set_cosine_rate(optimizer, base: float, step: int, total: int, warmup: int = 0) -> None:
    """A cosine decay from `base` to 0 over `total` steps, after a linear warm-up."""
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    for group in optimizer.param_groups:
        group["lr"] = base * scale * 0.5 * (1 + math.cos(math.pi * step / total))


def train_vae(vae, plan: Plan, rng: random.Random, report):
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.lr, weight_decay=0.0)
    vae.train()
    for step in range(plan.vae_steps):
        set_cosine_rate(optimizer, plan.lr, step, plan.vae_steps)
        # Crops of scenes at the sizes the model draws: edges at every scale.
        size = rng.choice([IMAGE_SIZE // 2, IMAGE_SIZE])
        _, x = scenes(rng, plan.vae_batch, size)
        top, left = (rng.randrange(0, size - plan.vae_crop + 1, 8) for _ in range(2))
        x = x[:, :, top : top + plan.vae_crop, left : left + plan.vae_crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        out = vae.decode(z).sample
        loss_rec = F.l1_loss(out, x) + F.mse_loss(out, x)
        loss_kl = posterior.kl().mean() / z[0].numel()
        loss_preview = F.mse_loss(latent_rgb(posterior.mean), F.avg_pool2d(x, 8))
        loss = loss_rec + 1e-3 * loss_kl + 0.1 * loss_preview
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == plan.vae_steps - 1:
            report("vae", step, plan.vae_steps, rec=loss_rec.item(), preview=loss_preview.item())
    vae.eval()


def tune_decoder(vae, plan: Plan, rng: random.Random, report):
    """Fit the decoder to the latents of whole scenes, the encoder (the UNet's latent space) fixed.

    The first VAE pass learns from 32 px crops: cheap, but a crop is not a whole
    picture to the group norms, and the UNet learns (and draws) the latents of
    whole pictures, at 64 and 128 px. Decoded as they were, those came back with
    washed-out colours and coloured edges. Here the decoder learns them back,
    with a little noise added, since the UNet's own latents are never exact.
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(SEED + 2)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=plan.decoder_lr, weight_decay=0.0)
    vae.train()
    for step in range(plan.decoder_steps):
        set_cosine_rate(optimizer, plan.decoder_lr, step, plan.decoder_steps)
        size = rng.choice([IMAGE_SIZE // 2, IMAGE_SIZE])
        _, x = scenes(rng, plan.decoder_batch, size)
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + plan.decoder_noise * posterior.mean.std() * torch.randn(
                posterior.mean.shape, generator=generator
            )
        out = vae.decode(z).sample
        loss = F.l1_loss(out, x) + F.mse_loss(out, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == plan.decoder_steps - 1:
            report("decoder", step, plan.decoder_steps, rec=loss.item())
    vae.requires_grad_(False)
    vae.eval()


def encoded_scenes(vae, count: int, size: int, rng: random.Random):
    """`count` scenes with the mean and spread of their latents, encoded in chunks."""
    import torch

    batch, means, stds = [], [], []
    with torch.no_grad():
        for start in range(0, count, 256):
            chunk, x = scenes(rng, min(256, count - start), size)
            posterior = vae.encode(x).latent_dist
            batch += chunk
            means.append(posterior.mean * vae.config.scaling_factor)
            stds.append(posterior.std * vae.config.scaling_factor)
    return batch, torch.cat(means), torch.cat(stds)


def train_diffusion(
    text_encoder, unet, vae, tokenizer, plan: Plan, rng: random.Random, report, checkpoint,
    seed: int = SEED,
):  # fmt: skip
    import torch
    import torch.nn.functional as F

    datasets = [
        encoded_scenes(vae, plan.dataset, IMAGE_SIZE, rng),
        encoded_scenes(vae, plan.half_dataset, IMAGE_SIZE // 2, rng),
    ]
    report("latents", 0, 1, std=datasets[0][1].std().item())

    noise_schedule = scheduler()
    alphas = noise_schedule.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=5.0) / snr  # min-SNR-5: no step dominates the loss
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=1e-4)
    ema = [copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()]
    for model in ema:
        model.requires_grad_(False)
    unet.train()
    text_encoder.train()
    generator = torch.Generator().manual_seed(seed)
    warmup = 200
    for step in range(plan.unet_steps):
        set_cosine_rate(optimizer, plan.lr, step, plan.unet_steps, warmup)
        every, means, stds = datasets[0 if rng.random() < 1 - plan.half_share else 1]
        picks = torch.randint(0, len(every), (plan.unet_batch,), generator=generator)
        batch = [every[i] for i in picks.tolist()]
        captions = [world.training_caption(scene, rng) for scene in batch]
        captions = [with_stray_letters(c, rng) for c in captions]
        latents = means[picks] + stds[picks] * torch.randn(means[picks].shape, generator=generator)
        ids = tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (len(batch),), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = text_encoder(ids)[0]
        predicted = unet(noisy, t, encoder_hidden_states=context).sample
        loss = (
            F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3)) * weights[t]
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, model in zip(ema, (unet, text_encoder), strict=True):
                for p_avg, p in zip(average.parameters(), model.parameters(), strict=True):
                    p_avg.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == plan.unet_steps - 1:
            report("unet", step, plan.unet_steps, loss=loss.item())
        if checkpoint and step and step % checkpoint == 0:
            save(vae, *ema, tokenizer, plan.out)
    return ema


def with_stray_letters(caption: str, rng: random.Random) -> str:
    """Sometimes add a made-up word: any word outside the vocabulary must change nothing."""
    if rng.random() < 0.05:
        word = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(3, 7)))
        words = caption.split()
        words.insert(rng.randint(0, len(words)), word)
        return " ".join(words)
    return caption


def save(vae, unet, text_encoder, tokenizer, out: Path):
    """The parts as a diffusers Stable Diffusion folder, weights in fp16 safetensors."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=copy.deepcopy(vae),
        text_encoder=copy.deepcopy(text_encoder),
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)


def load_parts(folder: Path):
    """The text encoder, UNet and VAE saved at `folder`, in fp32, to train further."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    def load(kind, sub):
        return kind.from_pretrained(folder / sub, torch_dtype=torch.float32)

    return (
        load(CLIPTextModel, "text_encoder"),
        load(UNet2DConditionModel, "unet"),
        load(AutoencoderKL, "vae"),
    )


def frozen_start(seed: int):
    """What a pass that trains an add-on (the LoRA, the ControlNet) starts from: seeded random
    sources, the tokenizer, and the shipped model's parts, frozen.
    Returns (rng, torch generator, tokenizer, (text encoder, UNet, VAE))."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = word_tokenizer()
    parts = load_parts(WEIGHTS)
    for model in parts:
        model.requires_grad_(False)
    return rng, generator, tokenizer, parts


def refine(plan: Plan, report=None, checkpoint: int = 0, round: int = 1) -> Path:
    """A further pass (`round` 1, 2, ...): from the weights saved at `plan.out`, over fresh scenes.

    It reads only the encoder of the VAE, so it may run before or after `refine_decoder`.
    """
    import dataclasses

    import torch

    report = report or (lambda *a, **k: None)
    seed = SEED + 1 if round == 1 else SEED + 1 + round  # SEED + 2 is the decoder pass's
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_encoder, unet, vae = load_parts(plan.out)
    vae.requires_grad_(False)
    second = dataclasses.replace(plan, unet_steps=plan.refine_steps, lr=plan.refine_lr)
    unet_ema, text_ema = train_diffusion(
        text_encoder, unet, vae, tokenizer, second, random.Random(seed), report, checkpoint,
        seed=seed,
    )  # fmt: skip
    save(vae, unet_ema, text_ema, tokenizer, plan.out)
    return plan.out


def refine_decoder(plan: Plan, report=None) -> Path:
    """The last pass alone (`tune_decoder`), on the weights saved at `plan.out`."""
    import torch

    report = report or (lambda *a, **k: None)
    torch.manual_seed(SEED + 2)
    text_encoder, unet, vae = load_parts(plan.out)
    tune_decoder(vae, plan, random.Random(SEED + 2), report)
    save(vae, unet, text_encoder, word_tokenizer(), plan.out)
    return plan.out


def further_passes(plan: Plan, report=None, checkpoint: int = 0) -> Path:
    """Every pass after the first, on the first pass's weights saved at `plan.out`: the
    further UNet passes (`refine`), then the decoder pass (`refine_decoder`)."""
    if plan.refine_steps:
        for round in range(1, plan.refine_rounds + 1):
            refine(plan, report, checkpoint, round)
    if plan.decoder_steps:
        refine_decoder(plan, report)
    return plan.out


def train(plan: Plan | None = None, report=None, checkpoint: int = 0) -> Path:
    """Train the demo model and save it at `plan.out`; `checkpoint` saves every so many steps.

    The first pass is saved (fp16) before the second starts from it, so running
    `refine` alone on a first pass's folder gives exactly what `train` gives.
    """
    import torch

    plan = plan or Plan()
    report = report or (lambda *a, **k: None)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    tokenizer = word_tokenizer()
    text_encoder, unet, vae = build_parts(tokenizer)
    started = time.monotonic()
    train_vae(vae, plan, rng, report)
    vae.requires_grad_(False)
    unet_ema, text_ema = train_diffusion(
        text_encoder, unet, vae, tokenizer, plan, rng, report, checkpoint
    )
    save(vae, unet_ema, text_ema, tokenizer, plan.out)
    further_passes(plan, report, checkpoint)
    logger.info("Trained the demo model in %.0f s", time.monotonic() - started)
    return plan.out
