"""diffusers on PyTorch: the model loaded in the precision its device wants, image-to-image
and inpainting pipelines sharing its weights, LoRA as peft adapters."""

from pathlib import Path

from . import checkpoints, demo, prompt_embeds, single_file
from .base import GenerationRequest, PhaseHook, PipelineBackend
from .sources import CheckpointUnusable, DeviceUnusable, downloads, resolve_model


class TorchBackend(PipelineBackend):
    """diffusers on PyTorch: CPU, CUDA or MPS, whatever `SD_DEVICE` names."""

    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        self.pipe = None
        self.by_mode = {}
        self.adapters: dict[str, str] = {}
        """LoRA loaded as adapters: {adapter name: the file's hash when loaded}."""

    def load(self, on_phase: PhaseHook) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise DeviceUnusable(
                f"Unknown PyTorch device {self.device!r} (SD_DEVICE): use cpu, cuda, cuda:N or mps."
            ) from exc
        check_device_here(torch, device)
        on_phase("loading model")
        source = resolve_model(self.model)
        # Half precision halves memory and doubles speed on a GPU; CPUs want float32, and
        # so does the demo model anywhere: its narrow layers lose the picture in float16
        # (on an H100, 11.6 levels off the CPU's image against 0.06 in float32, where
        # another seed is 14.9 off: tests/test_cuda.py), and it is too small to gain.
        half = device.type != "cpu" and source != str(demo.WEIGHTS)
        dtype = torch.float16 if half else torch.float32
        if single_file.is_single_file(source):
            try:
                pipe = single_file.load_pipeline(Path(source), dtype)
            except checkpoints.Unusable as exc:
                raise CheckpointUnusable(f"The checkpoint {self.model} {exc}.") from None
        else:
            with downloads(self.model, source):
                pipe = AutoPipelineForText2Image.from_pretrained(
                    source, torch_dtype=dtype, **left_out_parts(source)
                )
        pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.pipe = pipe.to(device)
        if device.type == "cpu":
            # 6 to 8 % less time a step on this project's CPU, images within 0.1 of a level
            # (bench.torch_cpu); bfloat16 autocast and torch.compile did not pay there.
            for part in ("unet", "vae"):
                if isinstance(getattr(pipe, part, None), torch.nn.Module):
                    getattr(pipe, part).to(memory_format=torch.channels_last)

    def prompt_tokenizer(self):
        return self.pipe.tokenizer if prompt_embeds.supports(self.pipe) else None

    def pipeline_for(self, request: GenerationRequest, on_phase: PhaseHook, batch: int = 1):
        # Image-to-image and inpainting pipelines share the loaded components:
        # no second copy of the weights. A 4-channel UNet inpaints too (diffusers
        # blends the masked latents); a 9-channel inpainting model does it better.
        if request.mode not in self.by_mode:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = {
                "txt2img": None,
                "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting,
            }[request.mode]
            pipe = self.pipe if auto is None else auto.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self.by_mode[request.mode] = pipe
        return self.by_mode[request.mode]

    def apply_loras(self, request: GenerationRequest) -> None:
        """The prompts' LoRA as diffusers adapters (loaded once, weighted per job); a job
        without LoRA runs with every adapter off, exactly the base model."""
        from ..loras import lora_hash, loras_of

        weights: dict[str, float] = {}
        for lora, weight in loras_of(request.prompt) + loras_of(request.negative_prompt):
            adapter = adapter_name(lora.name)
            current = lora_hash(lora.path)
            if self.adapters.get(adapter) != current:
                if adapter in self.adapters:  # the file changed: load it afresh
                    self.pipe.delete_adapters(adapter)
                self.pipe.load_lora_weights(
                    str(lora.path.parent), weight_name=lora.path.name, adapter_name=adapter
                )
                self.adapters[adapter] = current
            weights[adapter] = weights.get(adapter, 0.0) + weight
        if not weights:
            if self.adapters:
                self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))

    def apply_embeddings(self, requests: list[GenerationRequest]) -> None:
        """The embeddings the prompts name, each loaded once (a changed file is a new one)."""
        from .embeddings import load_into, used_in

        loaded = self.pipe.__dict__.setdefault("loaded_embeddings", {})
        for request in requests:
            for file in used_in(request.prompt, request.negative_prompt, self.model):
                version = (file.size, file.mtime_ns)
                if loaded.get(file.stem) == version:
                    continue
                if file.stem in loaded:
                    self.pipe.unload_textual_inversion(file.stem)
                load_into(self.pipe, file)
                loaded[file.stem] = version

    def random_generator(self, seed: int):
        import torch

        return torch.Generator(device="cpu").manual_seed(seed)


def adapter_name(name: str) -> str:
    """A LoRA's name as a peft adapter name (letters, digits and underscores)."""
    return "lora_" + "".join(c if c.isalnum() else "_" for c in name)


def left_out_parts(source: str) -> dict:
    """{part: None} for each part the model's index leaves out (SD3 without T5 has no
    text_encoder_3): diffusers wants them named to load without them."""
    import json
    from pathlib import Path

    try:
        index = json.loads((Path(source) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}  # a hub id: diffusers reads its index itself
    return {name: None for name, value in index.items() if value == [None, None]}


def check_device_here(torch, device) -> None:
    """A GPU that this PyTorch cannot use is a setup problem: say which, and what to do
    (torch's own words are "Torch not compiled with CUDA enabled", at the first tensor)."""
    if device.type == "cuda" and not torch.cuda.is_available():
        if torch.backends.cuda.is_built():
            why, instead = "finds no CUDA GPU", "check the driver and CUDA_VISIBLE_DEVICES"
        else:
            why = "is a build without CUDA"
            instead = "install a CUDA build of torch into .venv (docs/deploy.md)"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        why, instead = "cannot use Apple's MPS here", "run the worker on a Mac with Apple silicon"
    else:
        return
    raise DeviceUnusable(
        f"SD_DEVICE is {device}, but this PyTorch ({torch.__version__}) {why}: {instead}, "
        "or set SD_DEVICE=cpu."
    )
