"""ControlNet: the models, their families, and what a job's units do to the pipeline call.

Models come from SD_CONTROLNET_DIR (by default `<SD_WEBUI_DIR>/models/ControlNet`): single-file
`.safetensors` as lllyasviel and civitai ship them (loaded offline with the shipped config of
their family, `configs/controlnet-<family>/`) and diffusers folders (a `config.json` of a
`ControlNetModel`); the demo's `demo-canny` is always listed. A model's family is the width
of its cross-attention (768: SD 1.x, 1024: SD 2.x, 2048: SDXL, 64: the demo), which must be the
checkpoint's.

Control modes, as sd-webui-controlnet applies them (its "soft injection" and "CFG injection"):
`Balanced` adds the ControlNet's residuals as they are; `My prompt is more important` scales
the i-th of its n residuals by 0.825 ** (n - 1 - i), so the coarse layers count most and the
prompt keeps the details; `ControlNet is more important` does the same and adds them only to
the prompt's half of classifier-free guidance, never the negative's (diffusers' guess mode,
unit by unit).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints, demo, preprocessors

CONFIGS = Path(__file__).resolve().parent / "configs"
CROSS_ATTENTION_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl", 64: "demo"}
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "demo": "the demo model"}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
SOFT_INJECTION = 0.825
"""sd-webui-controlnet's per-layer factor for the modes that favour one side."""


class Unusable(ValueError):
    """A ControlNet that cannot be used with this job, with the reason."""


@dataclass(frozen=True)
class ControlModel:
    name: str
    """As the lists show it and requests name it (A1111's `model_name`, or `demo-canny`)."""
    path: Path
    family: str | None
    problem: str | None = None
    sha256: str | None = None

    @property
    def title(self) -> str:
        """The extension's `name [hash]` where the short hash is known."""
        return f"{self.name} [{self.sha256[:8]}]" if self.sha256 else self.name


def family_of_header(header: dict) -> str | None:
    """The family of a ControlNet's tensors (LDM or diffusers names): its cross-attention."""
    for key, entry in header.items():
        if key.endswith("attn2.to_k.weight") and isinstance(entry, dict):
            shape = entry.get("shape") or []
            if len(shape) == 2:
                return CROSS_ATTENTION_FAMILIES.get(shape[1])
        if key.endswith("attn2.to_k.weight") and hasattr(entry, "shape"):
            return CROSS_ATTENTION_FAMILIES.get(list(entry.shape)[1])
    return None


def family_of_folder(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return CROSS_ATTENTION_FAMILIES.get(config.get("cross_attention_dim"))


def is_controlnet_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "ControlNetModel"


def models() -> list[ControlModel]:
    """The ControlNets here: the demo's, then the folder's files and diffusers folders."""
    from .model_hashes import known_sha256

    found = [ControlModel(demo.CONTROLNET_NAME, demo.CONTROLNET, "demo")]
    if not (demo.CONTROLNET / "config.json").is_file():
        found[0] = ControlModel(demo.CONTROLNET_NAME, demo.CONTROLNET, "demo", "not trained")
    for file in checkpoints.scan("controlnet"):
        if is_controlnet_folder(file.path.parent):
            continue  # the weights of a diffusers folder, listed as the folder below
        family, problem = None, file.problem
        if problem is None and file.path.suffix.lower() == ".safetensors":
            family = family_of_header(checkpoints.safetensors_header(file.path, file.size))
            if family is None:
                problem = "not a ControlNet of SD 1.x, 2.x or XL (unknown tensor names)"
        elif problem is None:
            problem = "only .safetensors ControlNets are loaded (convert this pickle)"
        found.append(ControlModel(file.model_name, file.path, family, problem, known_sha256(file)))
    root = checkpoints.folder("controlnet")
    if root is not None and root.is_dir():
        for config in sorted(root.glob("*/config.json"))[: checkpoints.MAX_FILES]:
            if is_controlnet_folder(config.parent):
                family = family_of_folder(config.parent)
                found.append(ControlModel(config.parent.name, config.parent, family))
    return found


def lookup(name: str) -> ControlModel | None:
    """A model by its name or title (`name [hash]`), or by a file's name with extension."""
    if not isinstance(name, str) or not name or len(name) > 1000:
        return None
    plain = name.rsplit(" [", 1)[0] if name.endswith("]") else name
    plain = os.path.splitext(plain)[0] if plain.lower().endswith(".safetensors") else plain
    plain = plain.replace("/", "_")
    return next((m for m in models() if name == m.title or plain == m.name), None)


def checkpoint_family(model: str) -> str | None:
    """The family of a job's checkpoint, as ControlNets name it; None where it cannot tell."""
    from .sources import local_folder

    if model.endswith((".safetensors", ".ckpt", "]")):
        file = checkpoints.lookup(model)
        if file is not None and file.family:
            return file.family.split("-")[0]
    folder = local_folder(model)
    if folder is None:
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return CROSS_ATTENTION_FAMILIES.get(unet.get("cross_attention_dim"))


def fit_problem(control: ControlModel, model: str) -> str | None:
    """Why `control` cannot serve a job of the checkpoint `model`; None where it can."""
    if control.problem:
        return f"The ControlNet {control.name} cannot be used: {control.problem}."
    wanted = checkpoint_family(model)
    if wanted is not None and control.family is not None and wanted != control.family:
        return (
            f"The ControlNet {control.name} is for {FAMILY_NAMES.get(control.family)}; the "
            f"model {checkpoints.display_name(model)} is {FAMILY_NAMES.get(wanted, wanted)}."
        )
    return None


def load_model(control: ControlModel, dtype):
    """The ControlNetModel, offline: a diffusers folder, or a single file with the shipped
    config of its family."""
    from diffusers import ControlNetModel

    if control.path.is_dir():
        return ControlNetModel.from_pretrained(control.path, torch_dtype=dtype)
    config = CONFIGS / f"controlnet-{control.family}"
    if not (config / "config.json").is_file():
        raise Unusable(f"no configuration for {control.family} ControlNets")
    try:
        return ControlNetModel.from_single_file(
            str(control.path), config=str(config), local_files_only=True, torch_dtype=dtype
        )
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise Unusable(f"The ControlNet {control.name} does not load ({first})") from None


@dataclass(frozen=True)
class ControlUnit:
    """One unit of a job: the picture as given, how to turn it into a control image, the
    model and how strongly and when it steers."""

    image: object
    """The PIL image as uploaded (before its preprocessor)."""
    model: str
    module: str = "none"
    weight: float = 1.0
    resize_mode: str = "crop and resize"
    processor_res: int = preprocessors.DEFAULT_RESOLUTION
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = CONTROL_MODES[0]
    pixel_perfect: bool = False


def control_image(unit: ControlUnit, size: tuple[int, int]):
    """The unit's control image at the output `size`: its preprocessor's result at the
    processor resolution (pixel perfect: the one that maps it pixel for pixel), fitted by
    its resize mode."""
    from ..images import fitted

    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = preprocessors.pixel_perfect_resolution(unit.image.size, size, unit.resize_mode)
    detected = preprocessors.run(
        unit.image, unit.module, resolution, unit.threshold_a, unit.threshold_b
    )
    return fitted(detected, size, unit.resize_mode)


def layer_scaling_hook(unit: ControlUnit, guided: bool):
    """A forward hook that applies the unit's control mode to its ControlNet's residuals
    (see the module's note); None for Balanced. `guided`: classifier-free guidance is on
    (the batch is the negative prompt's half, then the prompt's)."""
    if unit.control_mode == CONTROL_MODES[0]:
        return None
    cond_only = unit.control_mode == CONTROL_MODES[2]

    def hook(module, args, output):
        down, mid = output[0], output[1]
        count = len(down) + 1
        scaled = [r * SOFT_INJECTION ** (count - 1 - i) for i, r in enumerate(down)]
        if cond_only and guided and mid.shape[0] % 2 == 0:
            half = mid.shape[0] // 2  # diffusers stacks [negative, prompt]
            scaled = [_prompt_half(r, half) for r in scaled]
            mid = _prompt_half(mid, half)
        return (scaled, mid)

    return hook


def _prompt_half(residual, half: int):
    import torch

    return torch.cat([torch.zeros_like(residual[:half]), residual[half:]])


def pipeline_class(base_pipe, mode: str):
    """diffusers' ControlNet pipeline for the loaded model's family and the job's mode."""
    import diffusers

    xl = "XL" in type(base_pipe).__name__
    names = {
        "txt2img": "StableDiffusion{}ControlNetPipeline",
        "img2img": "StableDiffusion{}ControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusion{}ControlNetInpaintPipeline",
    }
    return getattr(diffusers, names[mode].format("XL" if xl else ""))


def call_arguments(units: list[ControlUnit], size: tuple[int, int], mode: str) -> dict:
    """The ControlNet pipeline's arguments for the units (one unit: plain values)."""
    images = [control_image(unit, size) for unit in units]
    single = len(units) == 1
    arguments = {
        "controlnet_conditioning_scale": units[0].weight if single else [u.weight for u in units],
        "control_guidance_start": [u.guidance_start for u in units],
        "control_guidance_end": [u.guidance_end for u in units],
    }
    key = "image" if mode == "txt2img" else "control_image"
    arguments[key] = images[0] if single else images
    if single:
        arguments["control_guidance_start"] = units[0].guidance_start
        arguments["control_guidance_end"] = units[0].guidance_end
    return arguments
