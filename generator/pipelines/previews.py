"""Live previews: the current latents as a small picture, without the VAE.

A fixed linear map takes Stable Diffusion's four latent channels to RGB: the
factors ComfyUI and A1111 use for "latent2rgb" previews of SD 1.x/2.x (SDXL's
latents look alike through it). It costs a few microseconds where a VAE decode
costs as much as a step, which is why previews can come twice a second. On a GPU
the picture comes back to the CPU asynchronously (`start_preview`): a step never
waits for the GPU to finish its work so far just to show a preview.
"""

import functools
import io
from dataclasses import dataclass

SD_LATENT_RGB = (
    # R       G        B
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
UPSCALE = 4
"""A latent pixel covers 8x8 image pixels: a quarter of the final size is plenty."""
MAX_SIDE = 256
JPEG_QUALITY = 70


def latents_to_image(latents):
    """The first image of a (batch, channels, height, width) latent tensor, as a PIL image."""
    return rgb_to_image(latents_to_rgb(latents))


def latents_to_rgb(latents):
    """The first image's small RGB picture (3, h, w) as 8-bit values, on the CPU.

    The projection runs where the latents are (one small matmul on a GPU); only the
    small result crosses to the CPU, and the pipeline's tensors are never touched."""
    return rgb_where_latents_are(latents).cpu()


@dataclass
class Preview:
    """A preview's small RGB picture of one step, on the CPU once `ready()`."""

    step: int
    rgb: object
    copied: object = None
    """The CUDA event after its copy from a GPU; None: already on the CPU."""

    def ready(self) -> bool:
        """Whether the picture has landed (asks the GPU without waiting for it)."""
        return self.copied is None or self.copied.query()


def start_preview(latents, step: int) -> Preview:
    """Step `step`'s preview: at once on the CPU. From a GPU the small picture is copied
    into pinned memory without waiting (`non_blocking`), behind the work queued on the
    GPU so far; `ready()` tells when it has landed, so no step waits on the GPU for it."""
    import torch

    rgb = rgb_where_latents_are(latents)
    if rgb.device.type != "cuda":
        return Preview(step, rgb.cpu())
    landed = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
    landed.copy_(rgb, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return Preview(step, landed, copied)


def rgb_where_latents_are(latents):
    """`latents_to_rgb`'s picture, left on the latents' device."""
    import torch

    x = torch.as_tensor(latents)[0].detach().float()
    if x.shape[0] == len(SD_LATENT_RGB):
        factors = latent_rgb_factors(x.device)
        rgb = torch.einsum("chw,cr->rhw", x, factors).add(1).div(2)
    else:
        # An unknown latent space: its first three channels, each stretched to 0..1.
        rgb = x[:3]
        low = rgb.amin(dim=(1, 2), keepdim=True)
        high = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    return rgb.clamp(0, 1).mul(255).round().to(torch.uint8)


@functools.cache
def latent_rgb_factors(device):
    """SD_LATENT_RGB on `device`, copied there once: a copy to a GPU waits for it."""
    import torch

    return torch.tensor(SD_LATENT_RGB, device=device)


def rgb_to_image(rgb):
    """The PIL picture of `latents_to_rgb`'s result, scaled up for the page."""
    from PIL import Image

    pixels = rgb.permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels if pixels.shape[2] == 3 else pixels[:, :, 0])
    scale = min(UPSCALE, MAX_SIDE / max(image.size))
    if scale > 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def encode_preview(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
