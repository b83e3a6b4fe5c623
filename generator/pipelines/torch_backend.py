"""diffusers on PyTorch: the model loaded in the precision its device wants, image-to-image
and inpainting pipelines sharing its weights, LoRA as peft adapters, and (SD_TORCH_COMPILE)
the UNet and VAE decoder compiled by torch.compile once per image size and batch."""

import os
from dataclasses import replace
from pathlib import Path

from django.conf import settings

from . import checkpoints, controlnet, demo, prompt_embeds, single_file
from .base import GenerationRequest, PhaseHook, PipelineBackend, StepHook
from .sources import CheckpointUnusable, DeviceUnusable, downloads, resolve_model


class TorchBackend(PipelineBackend):
    """diffusers on PyTorch: CPU, CUDA or MPS, whatever `SD_DEVICE` names."""

    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        self.pipe = None
        self.by_mode = {}
        self.adapters: dict[str, str] = {}
        self.own_vae = None
        """The model's own VAE, put back for `None` (and `Automatic` without a file)."""
        self.vae_file: tuple | None = None
        """(path, size, mtime) of the VAE file on the pipeline now; None: its own VAE."""
        """LoRA loaded as adapters: {adapter name: the file's hash when loaded}."""
        self.compile_mode = settings.SD_TORCH_COMPILE
        self.compiled_shapes: set[tuple] = set()
        """(width, height, batch, prompt windows) the compiled parts have run at."""
        self.controlnets: dict[str, tuple] = {}
        """ControlNets loaded: {name: ((path, size, mtime), ControlNetModel)}."""

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
        self.own_vae = getattr(pipe, "vae", None)
        if settings.SD_CHANNELS_LAST:
            # 6 to 8 % less time a step on this project's CPU, images within 0.1 of a level
            # (bench.torch_cpu); bfloat16 autocast and torch.compile did not pay there.
            for part in ("unet", "vae"):
                if isinstance(getattr(pipe, part, None), torch.nn.Module):
                    getattr(pipe, part).to(memory_format=torch.channels_last)
        if self.compile_mode != "off":
            compile_parts(torch, pipe, self.compile_mode)

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        on_step: StepHook,
        on_phase: PhaseHook,
        on_start=None,
    ) -> list:
        shape = self.compile_shape(requests)
        if shape is not None and shape not in self.compiled_shapes:
            # A short run at the same shapes, thrown away: its steps compile the UNet
            # (CUDA graphs are recorded at its second call), its decode the VAE's
            # decoder. The job's own steps then take their usual time, so its ETA and
            # the model's estimates stay true; the next job of this shape skips this.
            on_phase("compiling")
            warm_up = [
                replace(r, steps=WARM_UP_STEPS, init_image=None, mask_image=None, controlnet=())
                for r in requests
            ]
            super().generate_batch(warm_up, lambda *args: True, ignore_phase)
            self.compiled_shapes.add(shape)
        hooks = self.control_hooks(requests[0])
        try:
            return super().generate_batch(requests, on_step, on_phase, on_start)
        finally:
            for hook in hooks:
                hook.remove()

    def control_hooks(self, request: GenerationRequest) -> list:
        """The units' control modes, as forward hooks on their ControlNets (removed after
        the job: the loaded models are shared by every job)."""
        hooks = []
        for unit in request.controlnet:
            hook = controlnet.layer_scaling_hook(unit, request.guided)
            if hook is not None:
                model = self.control_model(unit.model)
                hooks.append(model.register_forward_hook(hook))
        return hooks

    def control_model(self, name: str):
        """A ControlNet by name, loaded once (again when its file changes), on the device."""
        found = controlnet.lookup(name)
        if found is None:
            raise controlnet.Unusable(f"No ControlNet named {name} on this worker.")
        if found.problem:
            raise controlnet.Unusable(
                f"The ControlNet {found.name} cannot be used: {found.problem}."
            )
        stat = found.path.stat()
        version = (str(found.path), stat.st_size, stat.st_mtime_ns)
        loaded = self.controlnets.get(found.name)
        if loaded is None or loaded[0] != version:
            model = controlnet.load_model(found, self.pipe.unet.dtype)
            model.to(self.pipe.device)
            self.controlnets[found.name] = (version, model)
        return self.controlnets[found.name][1]

    def control_inputs(self, request: GenerationRequest) -> dict:
        if not request.controlnet:
            return {}
        size = (request.width, request.height)
        return controlnet.call_arguments(list(request.controlnet), size, request.mode)

    def compile_shape(self, requests: list[GenerationRequest]) -> tuple | None:
        """What the compiled parts are compiled for (dynamic=False: each is a compile of its
        own); None where nothing is compiled."""
        if self.compile_mode == "off":
            return None
        first = requests[0]
        return (first.width, first.height, len(requests), self.prompt_windows(first))

    def prompt_tokenizer(self):
        return self.pipe.tokenizer if prompt_embeds.supports(self.pipe) else None

    def pipeline_for(self, request: GenerationRequest, on_phase: PhaseHook, batch: int = 1):
        if request.controlnet:
            # diffusers' ControlNet pipeline of the mode, on the loaded components (no
            # second copy of the weights), with the units' models: several in one
            # MultiControlNetModel, each unit's weight and guidance span its own.
            from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

            models = [self.control_model(unit.model) for unit in request.controlnet]
            model = models[0] if len(models) == 1 else MultiControlNetModel(models)
            pipe = controlnet.pipeline_class(self.pipe, request.mode).from_pipe(
                self.pipe, controlnet=model
            )
            pipe.set_progress_bar_config(disable=True)
            return pipe
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

    def memory_bytes(self) -> int:
        """The bytes of the weights and buffers of the pipeline's parts (and a VAE file's)."""
        import torch

        parts = {id(p): p for p in [*self.pipe.components.values(), self.own_vae]}
        return sum(
            tensor.numel() * tensor.element_size()
            for part in parts.values()
            if isinstance(part, torch.nn.Module)
            for tensor in [*part.parameters(), *part.buffers()]
        )

    def apply_vae(self, request: GenerationRequest) -> None:
        """The request's VAE on every pipeline of the model (they share components): a VAE
        file, loaded when it changes (one kept besides the model's own), or the model's own."""
        from . import vaes

        try:
            file = vaes.resolve(request.sd_vae, self.model)
        except checkpoints.Unusable as exc:
            raise CheckpointUnusable(f"{exc}.") from None
        wanted = None if file is None else (str(file.path), file.size, file.mtime_ns)
        if wanted == self.vae_file:
            self.vae_used = file
            return
        vae = self.own_vae
        if file is not None:
            try:
                vae = vaes.load(file, self.model, self.own_vae.dtype)
            except checkpoints.Unusable as exc:
                raise CheckpointUnusable(f"{exc}.") from None
            vae = vae.to(self.own_vae.device)
        for pipe in {id(p): p for p in [self.pipe, *self.by_mode.values()]}.values():
            pipe.vae = vae
        self.vae_file, self.vae_used = wanted, file

    def apply_loras(self, request: GenerationRequest) -> None:
        """The prompts' LoRA as diffusers adapters (loaded once, weighted per job); a job
        without LoRA runs with every adapter off, exactly the base model."""
        from .loras import lora_hash, loras_of

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


WARM_UP_STEPS = 3
"""Steps of a compiling run: the first compiles, the second records the CUDA graphs."""
RECOMPILE_LIMIT = 64
"""Shapes (sizes, batches, prompt lengths) a compiled part takes before torch runs it
uncompiled (torch's default is 8)."""


def compile_parts(torch, pipe, mode: str) -> None:
    """Compile the UNet and the VAE's decoder in place (`nn.Module.compile`: the pipeline
    and LoRA see the same modules). torch compiles lazily, at their first call for each
    shape; its inductor caches the result under SD_COMPILE_CACHE_DIR, so a restarted worker
    recompiles from there in a fraction of the time."""
    # Read by inductor when it first needs its cache (the FX graph and AOTAutograd caches
    # are on by default, and Triton's kernels go under it too).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(settings.SD_COMPILE_CACHE_DIR)
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    options = {} if mode == "default" else {"mode": mode}
    for part in (getattr(pipe, "unet", None), getattr(getattr(pipe, "vae", None), "decoder", None)):
        if isinstance(part, torch.nn.Module):
            part.compile(dynamic=False, **options)


def ignore_phase(phase: str) -> None:
    pass


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
