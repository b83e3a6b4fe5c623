"""What every backend does the same way: the request a job makes, the step callback, one
pipeline call for a batch of jobs with their own seeds, and the image inputs."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..images import filled, pasted_back
from ..prompts import extract_loras
from . import prompt_embeds, vaes
from .schedulers import make_scheduler
from .upscalers import (
    LATENT_MODES,
    NONE,
    center_crop,
    cover_size,
    hires_size,
    second_pass_schedule,
    target_size,
    tile_total,
    torch_device,
    upscale,
    upscale_latents,
)

StepHook = Callable[..., bool]
"""on_step(step, total_steps, latents) -> whether to go on."""
PhaseHook = Callable[[str], None]
"""on_phase(text): what the worker is doing now, for the page."""


class GenerationInterrupted(Exception):
    """The step hook asked to stop (cancel, shutdown or a lost claim)."""


@dataclass(frozen=True)
class GenerationRequest:
    """What the pipeline is asked for: the session's values of the spec's `request` parameters."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    scheduler: str = "Euler"
    schedule_type: str = "Automatic"
    strength: float = 0.75
    resize_mode: str = "just resize"
    mask_blur: int = 4
    inpainting_fill: str = "original"
    clip_skip: int = 1
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_sampler_name: str = ""
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    job: str = "generate"
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 0
    upscaling_resize_h: int = 0
    sd_vae: str = "Automatic"
    """A1111's VAE choice (pipelines.vaes): a VAE file's name, Automatic or None."""
    init_image: object = None
    """A PIL image, already at the output size (image-to-image and inpainting)."""
    mask_image: object = None
    """A PIL "L" image at the output size, already blurred: white is repainted."""
    controlnet: tuple = ()
    """ControlNet units (`pipelines.controlnet.ControlUnit`), their images as given."""

    @property
    def hires(self) -> bool:
        """The hires fix: a second, image-to-image pass of the upscaled first."""
        return self.enable_hr and self.mode == "txt2img"

    @property
    def hires_size(self) -> tuple[int, int]:
        return hires_size(
            self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y
        )

    @property
    def hires_steps(self) -> int:
        """The steps the second pass runs (0: the first pass's)."""
        return self.hr_second_pass_steps or self.steps

    @property
    def guided(self) -> bool:
        """Classifier-free guidance on: the negative prompt's half of the batch runs."""
        return self.guidance_scale > 1

    @property
    def mode(self) -> str:
        if self.job == "upscale":
            return "upscale"
        if self.mask_image is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"


def step_callback(on_step: StepHook):
    """Adapt `on_step` to diffusers' `callback_on_step_end`.

    To stop, it sets `pipe._interrupt` (the documented way) and raises, so the
    pipeline also skips the VAE decode of an image nobody wants.
    """

    def callback(pipe, step_index, timestep, callback_kwargs):
        if not on_step(step_index + 1, pipe.num_timesteps, callback_kwargs.get("latents")):
            pipe._interrupt = True
            raise GenerationInterrupted
        return callback_kwargs

    return callback


class PipelineBackend(ABC):
    """One model on one device, loaded once and kept warm between jobs."""

    scheduler_config: dict
    """The model's own scheduler config, which every job's scheduler starts from."""

    def __init__(self, model: str, device: str):
        self.model = model
        self.device = device

    def apply_embeddings(self, requests: list[GenerationRequest]) -> None:
        """Load the textual-inversion embeddings the prompts name (pipelines.embeddings);
        a backend without them leaves the names as words."""
        return None

    @abstractmethod
    def load(self, on_phase: PhaseHook) -> None:
        """Load (and on first use build, export or compile) the model."""

    @abstractmethod
    def pipeline_for(self, request: GenerationRequest, on_phase: PhaseHook, batch: int = 1):
        """The loaded pipeline for this request's mode (`request.mode`) and size, for
        `batch` such requests at once."""

    vae_used = None
    """The VAE file (checkpoints.ModelFile) the last job decoded with; None: the model's own."""

    def memory_bytes(self) -> int:
        """What the loaded model takes in memory, about (its weights' bytes); 0: unknown."""
        return 0

    def apply_vae(self, request: GenerationRequest) -> None:
        """Put the request's VAE on the pipeline (pipelines.vaes). This backend has only the
        model's own: a VAE file named is refused (`Automatic` is the model's own here)."""
        if request.sd_vae not in (vaes.AUTOMATIC, vaes.NONE):
            raise ValueError(f"VAE files need the pytorch backend; {type(self).__name__} has none.")

    def apply_loras(self, request: GenerationRequest) -> None:
        """Put the LoRA the prompts name in place for this job (and take away the last
        job's). This backend applies none: a prompt that names one is refused."""
        if extract_loras(request.prompt)[1] or extract_loras(request.negative_prompt)[1]:
            raise ValueError(f"LoRA need the pytorch backend; {type(self).__name__} has none.")

    def control_inputs(self, request: GenerationRequest) -> dict:
        """The pipeline's arguments for the request's ControlNet units; this backend has
        no ControlNet pipelines."""
        if request.controlnet:
            raise ValueError(
                f"ControlNet runs on the PyTorch backend; {type(self).__name__} has none."
            )
        return {}

    @abstractmethod
    def random_generator(self, seed: int):
        """The random source that makes a seed reproducible on this backend."""

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook,
        on_phase: PhaseHook,
        on_start: Callable[[], None] | None = None,
    ):
        """Run the pipeline and return the PIL image; `on_start` marks the start of denoising."""
        return self.generate_batch([request], on_step, on_phase, on_start)[0]

    def prompt_tokenizer(self):
        """The tokenizer `prompt_embeds` encodes this model's prompts with; None where it
        does not (the pipeline cuts every prompt to one window)."""
        return None

    def prompt_windows(self, request: GenerationRequest) -> int:
        """How many 77-token windows the request's prompts take (`prompt_embeds`): the
        length of its text embeddings, which the jobs of one batch must share."""
        tokenizer = self.prompt_tokenizer()
        if tokenizer is None:
            return 1
        prompt, negative = (
            extract_loras(text)[0] for text in (request.prompt, request.negative_prompt)
        )
        return prompt_embeds.windows(tokenizer, prompt, negative)

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        on_step: StepHook,
        on_phase: PhaseHook,
        on_start: Callable[[], None] | None = None,
    ) -> list:
        """Run requests that differ only in their prompts and seeds as one pipeline call and
        return their images, each the one its request gets alone (its own generator).

        `on_step` gets the whole batch's latents, one row per request. Requests that
        cannot share a call (image inputs, or prompts of different lengths in
        77-token windows) raise `Unbatchable` before anything runs.
        """
        first = requests[0]
        if len(requests) > 1 and (
            first.mode != "txt2img"
            or first.hires
            or first.controlnet
            or len({self.prompt_windows(request) for request in requests}) > 1
        ):
            raise Unbatchable
        if first.hires:
            return [self.generate_hires(first, on_step, on_phase, on_start)]
        pipe = self.pipeline_for(first, on_phase, batch=len(requests))
        pipe.scheduler = make_scheduler(first.scheduler, self.scheduler_config, first.schedule_type)
        self.apply_vae(first)  # a batch shares it (params.BATCH_KEY)
        self.apply_loras(first)  # a batch has none (the worker's claim sees to it)
        self.apply_embeddings(requests)
        import torch

        # inference_mode rather than the pipelines' own no_grad: no version counters or
        # views tracked for autograd, which a GPU step notices (PyTorch's advice).
        with torch.inference_mode():
            text = batch_text_inputs(pipe, requests)
            if on_start is not None:
                on_start()
            generators = [self.random_generator(request.seed) for request in requests]
            # No "denoising" phase write here: the first step's write says it, and
            # a warm job's time to its first step stays close to one step.
            result = pipe(
                **text,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                width=first.width,
                height=first.height,
                generator=generators if len(requests) > 1 else generators[0],
                callback_on_step_end=step_callback(on_step),
                **image_inputs(first),
                **self.control_inputs(first),
            )
        images = list(result.images)
        if first.mode == "inpaint":
            # Outside the mask the result is the original, exactly (as A1111 does).
            images = [pasted_back(images[0], first.init_image, first.mask_image)]
        return images

    def upscale_device(self) -> str:
        """The PyTorch device upscaler models run on: the backend's own."""
        return torch_device(self.device)

    def generate_hires(
        self,
        request: GenerationRequest,
        on_step: StepHook,
        on_phase: PhaseHook,
        on_start: Callable[[], None] | None = None,
    ):
        """A1111's hires fix: the first pass at the request's size, upscaled (its latents
        by a latent mode, else the decoded picture by an image upscaler, encoded again),
        then an image-to-image pass at `strength` that runs exactly `hires_steps` steps.

        One progress bar: `on_step` counts over both passes (first steps, then the
        second's after them), with the whole total from the first step on; the upscale is
        a phase (`upscaling`, with its tiles done where a model runs)."""
        import torch

        first_steps, second_steps = request.steps, request.hires_steps
        total = first_steps + second_steps
        reached = [0]

        def counted(offset: int, steps: int):
            def report(step: int, pass_total: int, latents=None) -> bool:
                # A second-order sampler calls back more often than it has steps: scaled.
                done = offset + (step * steps) // max(pass_total, 1)
                reached[0] = max(reached[0], done)
                return on_step(reached[0], total, latents)

            return report

        latent = request.hr_upscaler in LATENT_MODES
        pipe = self.pipeline_for(request, on_phase)
        pipe.scheduler = make_scheduler(
            request.scheduler, self.scheduler_config, request.schedule_type
        )
        self.apply_loras(request)
        self.apply_embeddings([request])
        size = request.hires_size
        with torch.inference_mode():
            text = text_inputs(pipe, request)
            if on_start is not None:
                on_start()
            result = pipe(
                **text,
                num_inference_steps=first_steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                generator=self.random_generator(request.seed),
                callback_on_step_end=step_callback(counted(0, first_steps)),
                output_type="latent" if latent else "pil",
            )
            on_phase("upscaling")
            # A size of another shape: upscaled to cover it, the middle kept (as A1111).
            cover = cover_size((request.width, request.height), size, multiple=8)
            if latent:
                image = upscale_latents(result.images, request.hr_upscaler, cover)
                image = center_crop(image, (size[0] // 8, size[1] // 8))
            else:

                def on_tile(done: int, tiles: int) -> None:
                    on_phase(f"upscaling: tile {done} of {tiles}")

                image = upscale(
                    result.images[0], request.hr_upscaler, cover, self.upscale_device(), on_tile
                )
                image = center_crop(image, size)
            second = replace(
                request,
                width=size[0],
                height=size[1],
                prompt=request.hr_prompt or request.prompt,
                negative_prompt=request.hr_negative_prompt or request.negative_prompt,
                scheduler=request.hr_sampler_name or request.scheduler,
                init_image=image,
                enable_hr=False,
            )
            pipe = self.pipeline_for(second, on_phase)
            pipe.scheduler = make_scheduler(
                second.scheduler, self.scheduler_config, second.schedule_type
            )
            text = text_inputs(pipe, second)
            result = pipe(
                **text,
                image=image,
                strength=request.strength,
                num_inference_steps=second_pass_schedule(second_steps, request.strength),
                guidance_scale=request.guidance_scale,
                generator=self.random_generator(request.seed),
                callback_on_step_end=step_callback(counted(first_steps, second_steps)),
            )
        return result.images[0]


class Unbatchable(Exception):
    """These requests cannot share one pipeline call: run them one at a time."""


def batch_text_inputs(pipe, requests: list[GenerationRequest]) -> dict:
    """`text_inputs` of each request, stacked into the batch's."""
    import torch

    inputs = [text_inputs(pipe, request) for request in requests]
    if len(inputs) == 1:
        return inputs[0]
    if "prompt" in inputs[0]:  # a pipeline that encodes the text itself
        negatives = [each["negative_prompt"] for each in inputs]
        if None in negatives and any(negatives):  # None and "" differ for some (SDXL's zeros)
            raise Unbatchable
        return {
            "prompt": [each["prompt"] for each in inputs],
            "negative_prompt": None if None in negatives else negatives,
        }
    return {key: torch.cat([each[key] for each in inputs]) for key in inputs[0]}


def text_inputs(pipe, request: GenerationRequest) -> dict:
    """The prompts as the pipeline takes them: A1111-style embeddings (weights, long
    prompts, BREAK) where `prompt_embeds` can build them, else the text; LoRA tags out."""
    prompt, _ = extract_loras(request.prompt)
    negative, _ = extract_loras(request.negative_prompt)
    if getattr(pipe, "loaded_embeddings", None):  # a multi-vector embedding's extra tokens
        prompt = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
        negative = pipe.maybe_convert_prompt(negative, pipe.tokenizer)
    if prompt_embeds.supports(pipe):
        return prompt_embeds.prompt_embeddings(pipe, prompt, negative, request.clip_skip)
    if request.clip_skip != 1:
        raise ValueError(f"{type(pipe).__name__} cannot skip text encoder layers (clip_skip).")
    return {"prompt": prompt, "negative_prompt": negative or None}


def image_inputs(request: GenerationRequest) -> dict:
    """The pipeline's extra arguments for image-to-image and inpainting."""
    if request.mode == "txt2img":
        return {}
    inputs = {"image": request.init_image, "strength": request.strength}
    if request.mode == "inpaint":
        inputs["mask_image"] = request.mask_image
        if request.inpainting_fill == "fill":
            inputs["image"] = filled(request.init_image, request.mask_image)
        elif request.inpainting_fill == "latent noise":
            inputs["strength"] = 1.0  # the masked area starts from pure noise
    return inputs


def upscale_job(request: GenerationRequest, device: str, on_step: StepHook):
    """An upscale job (A1111's Extras): `init_image` upscaled by `upscaler_1` to its
    `upscaling_resize` times (or `upscaling_resize_w` x `_h`), with `upscaler_2`'s picture
    blended over it at `extras_upscaler_2_visibility`. `upscaler_1` None: the image as it
    is (as A1111). `on_step` counts the tiles of both, known before the first."""
    from PIL import Image

    image = request.init_image
    if request.upscaler_1 == NONE:
        on_step(1, 1, None)
        return image
    size = target_size(
        image.width, image.height, request.upscaling_resize,
        request.upscaling_resize_w, request.upscaling_resize_h,
    )  # fmt: skip
    final, size = size, cover_size(image.size, size)  # both sides given: cropped to them
    names = [request.upscaler_1]
    if request.upscaler_2 != NONE and request.extras_upscaler_2_visibility > 0:
        names.append(request.upscaler_2)
    counts = [tile_total(name, image.size, size, device) for name in names]
    total = sum(counts) or 1

    def on_tile(done: int, _: int) -> None:
        if not on_step(done, total, None):
            raise GenerationInterrupted

    result = upscale(image, names[0], size, device, on_tile)
    if len(names) > 1:
        other = upscale(image, names[1], size, device, on_tile, done=counts[0])
        result = Image.blend(result, other, request.extras_upscaler_2_visibility)
    if not sum(counts) and not on_step(1, 1, None):
        raise GenerationInterrupted
    return center_crop(result, final)
