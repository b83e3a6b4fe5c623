"""optimum-intel on OpenVINO: the model exported to IR once (at SD_OPENVINO_PRECISION), a
pipeline compiled per size and batch, on the device OpenVINO names."""

from collections import OrderedDict
from pathlib import Path

from django.conf import settings

from . import single_file
from .base import GenerationRequest, PhaseHook, PipelineBackend, Unbatchable
from .checkpoints import Unusable
from .openvino_ir import export_to_ir, holds_openvino_ir, ir_cache_dir, is_cached
from .sources import CheckpointUnusable, downloads, resolve_model

# SD_DEVICE names the PyTorch way; OpenVINO wants its own device names.
DEVICE_ALIASES = {"cpu": "CPU", "gpu": "GPU", "igpu": "GPU", "npu": "NPU", "auto": "AUTO"}


def openvino_device(name: str) -> str:
    """The OpenVINO device for SD_DEVICE, or a ValueError that lists the ones available."""
    import openvino as ov

    device = DEVICE_ALIASES.get(name.lower(), name.upper())
    available = ov.Core().available_devices
    plugin = device.split(":")[0]
    if plugin in {"AUTO", "MULTI", "HETERO"} or device in available or plugin in available:
        return device
    raise ValueError(
        f"OpenVINO device {name!r} is not available on this machine "
        f"(available: {', '.join(available)}, AUTO). Set SD_DEVICE to one of them."
    )


class OpenVINOBackend(PipelineBackend):
    """optimum-intel's OpenVINO pipelines, compiled for static shapes and kept per size."""

    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        self.precision = settings.SD_OPENVINO_PRECISION
        self.ir_dir: str | None = None
        self.ov_device: str | None = None
        # Static shapes run much faster on CPU than dynamic ones, so each size (and
        # prompt length, and batch) gets its own compiled pipeline; the least
        # recently used is dropped.
        self.compiled: OrderedDict[tuple, object] = OrderedDict()
        self.max_compiled = settings.SD_OPENVINO_COMPILED_SIZES
        self.tokenizer = None
        self.one_text_encoder = True

    def load(self, on_phase: PhaseHook) -> None:
        self.ov_device = openvino_device(self.device)
        source = resolve_model(self.model)
        if holds_openvino_ir(source):
            self.ir_dir = source
            self.one_text_encoder = not (Path(self.ir_dir) / "text_encoder_2").exists()
            return
        cache_dir = ir_cache_dir(self.model, self.precision)
        if not is_cached(cache_dir):
            on_phase("preparing OpenVINO model (first use)")
            if single_file.is_single_file(source):  # here already: nothing to download
                try:
                    export_to_ir(source, cache_dir, self.precision)
                except Unusable as exc:
                    raise CheckpointUnusable(f"The checkpoint {self.model} {exc}.") from None
            else:
                with downloads(self.model, source):
                    export_to_ir(source, cache_dir, self.precision)
        self.ir_dir = str(cache_dir)
        self.one_text_encoder = not (Path(self.ir_dir) / "text_encoder_2").exists()

    def prompt_tokenizer(self):
        """Read from the IR folder, without compiling a pipeline: the UNet is compiled for
        the prompts' length in 77-token windows (`prompt_windows`), as for a size."""
        if not self.one_text_encoder:
            return None
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(f"{self.ir_dir}/tokenizer")
        return self.tokenizer

    def pipeline_for(self, request: GenerationRequest, on_phase: PhaseHook, batch: int = 1):
        if batch > 1 and not self.one_text_encoder:
            raise Unbatchable  # SDXL's text encoders are reshaped for one prompt
        chunks = self.prompt_windows(request)
        key = (request.mode, request.width, request.height, chunks, batch)
        if key in self.compiled:
            self.compiled.move_to_end(key)
            return self.compiled[key]
        from optimum.intel import (
            OVPipelineForImage2Image,
            OVPipelineForInpainting,
            OVPipelineForText2Image,
        )

        on_phase("compiling OpenVINO model")
        # The same exported IR serves the three tasks (it has the VAE encoder).
        task = {
            "txt2img": OVPipelineForText2Image,
            "img2img": OVPipelineForImage2Image,
            "inpaint": OVPipelineForInpainting,
        }[request.mode]
        with downloads(self.model, self.ir_dir):  # a hub id that holds IR downloads here
            pipe = task.from_pretrained(
                self.ir_dir,
                export=False,
                device=self.ov_device,
                compile=False,
                # OpenVINO's model cache makes the next worker start compile faster.
                ov_config={"CACHE_DIR": str(settings.MODELS_DIR / "openvino" / "compiled")},
            )
        # One prompt at a time through the text encoder (`prompt_embeds`); a batch's
        # images go through the UNet and the decoder together, as if one prompt asked
        # for `batch` images.
        pipe.reshape(
            batch_size=1, height=request.height, width=request.width, num_images_per_prompt=batch
        )
        if chunks > 1:  # a long prompt: the text embeddings are chunks x 77 tokens long
            pipe.unet.model = pipe._reshape_unet(
                pipe.unet.model, 1, request.height, request.width, batch,
                chunks * pipe.tokenizer.model_max_length,
            )  # fmt: skip
        pipe.compile()
        pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.compiled[key] = pipe
        while len(self.compiled) > self.max_compiled:
            self.compiled.popitem(last=False)
        return pipe

    def generate_hires(self, request, on_step, on_phase, on_start=None):
        """Refused (the form refuses it first, `enable_hr`'s `backends`): a pipeline here
        is compiled for one size, and optimum-intel's takes no latents for a second pass."""
        raise ValueError(
            "The hires fix needs the pytorch backend: OpenVINO's pipelines are compiled for "
            "one size and cannot run the second pass."
        )

    def random_generator(self, seed: int):
        import torch

        # The same torch generator as the PyTorch backend: the same seed gives
        # the same initial latents, so both backends draw the same picture.
        return torch.Generator(device="cpu").manual_seed(seed)
