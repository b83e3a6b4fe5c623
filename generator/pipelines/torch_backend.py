from .base import GenerationRequest, PhaseHook, PipelineBackend
from .sources import resolve_model


class TorchBackend(PipelineBackend):
    """diffusers on PyTorch: CPU, CUDA or MPS, whatever `SD_DEVICE` names."""

    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        self.pipe = None
        self.by_mode = {}

    def load(self, on_phase: PhaseHook) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(
                f"Unknown PyTorch device {self.device!r} (SD_DEVICE): use cpu, cuda, cuda:N or mps."
            ) from exc
        on_phase("loading model")
        # Half precision halves memory and doubles speed on a GPU; CPUs want float32.
        dtype = torch.float32 if device.type == "cpu" else torch.float16
        pipe = AutoPipelineForText2Image.from_pretrained(
            resolve_model(self.model), torch_dtype=dtype
        )
        pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.pipe = pipe.to(device)

    def pipeline_for(self, request: GenerationRequest, on_phase: PhaseHook):
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

    def random_generator(self, seed: int):
        import torch

        return torch.Generator(device="cpu").manual_seed(seed)
