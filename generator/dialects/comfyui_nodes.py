"""ComfyUI's nodes as sdsite reads them: the few it accepts, what `/object_info` says of
them, and a workflow in ComfyUI's API format turned into one job's parameters.

This is not a node engine. A workflow is accepted when it is one of the graphs
Open WebUI, SillyTavern and most scripts send: text to image (CheckpointLoaderSimple,
CLIPTextEncode x2, EmptyLatentImage, KSampler, VAEDecode, SaveImage), image to image
(LoadImage + VAEEncode into the KSampler's latent) and LoRA (LoraLoader between the
checkpoint and the sampler, any number up to MAX_LORAS). The walk starts at the one
SaveImage and follows each link once, back to the checkpoint: linear, and bounded by
MAX_NODES. Any other node is refused, naming its class; a value out of range is refused
by the page's own form, and the error names the node and input it came from.
"""

import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from django.conf import settings

from ..params import BY_NAME, MAX_SEED
from ..pipelines.checkpoints import display_name, offered_models, scan
from ..pipelines.loras import available as available_loras
from ..prompts import MAX_WEIGHT
from ..web.api_errors import comfyui_error_body
from ..web.json_body import MAX_INTEGER

MAX_NODES = 64
"""The most nodes a workflow may have (the graphs sdsite takes have 7 to a dozen)."""
MAX_LORAS = 8
COMFYUI_SEED_MAX = MAX_INTEGER
"""The largest KSampler seed taken: 2**63 - 1, the largest integer a request body may carry
(ComfyUI's own bound is 2**64 - 1; its clients pick seeds up to 2**53). sdsite's seeds stop at
MAX_SEED (2**32 - 1): a larger one is used modulo 2**32 (`used_seed`), and the job, its
metadata and the history show the seed used."""

SAMPLERS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC",
    "lms": "LMS",
    "heun": "Heun",
    "lcm": "LCM",
}
"""ComfyUI's sampler names and sdsite's (A1111's) sampler for each."""
SCHEDULES = {
    "normal": "Automatic",
    "simple": "Automatic",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "beta": "Beta",
}
"""ComfyUI's schedulers and sdsite's schedule type for each (`simple` is the model's own
spacing, as `normal`)."""

ACCEPTED = (
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
    "LoadImage",
    "VAEEncode",
    "LoraLoader",
)
LISTED_ONLY = ("UNETLoader", "VAELoader")
"""Listed by /object_info (SillyTavern reads their lists) but refused in a workflow."""


def timestamp() -> int:
    """ComfyUI's message timestamps: milliseconds."""
    return int(time.time() * 1000)


def checkpoint_names() -> list[str]:
    """The models as `ckpt_name` lists them: SD_MODELS by their display names (never a
    server path), then the checkpoints folder's files."""
    return [display_name(m) if m in settings.SD_MODELS else m for m in offered_models()]


def model_of(ckpt_name: str) -> str:
    """The model a listed `ckpt_name` stands for (a display name back to SD_MODELS')."""
    by_display = {display_name(m): m for m in settings.SD_MODELS}
    return by_display.get(ckpt_name, ckpt_name)


def lora_names() -> list[str]:
    return [f"{name}.safetensors" for name in available_loras()]


def vae_names() -> list[str]:
    return [file.name for file in scan("vae") if file.usable]


def spec_number(name: str, kind: str, default=None, **extra) -> list:
    """A number input as /object_info gives it, with the parameter spec's bounds."""
    parameter = BY_NAME[name]
    options = {"default": parameter.default if default is None else default}
    options |= {"min": parameter.minimum or 0, "max": parameter.maximum} | extra
    return [kind, options]


def node_inputs(name: str, uploads=()) -> dict:
    """A node's inputs in /object_info's classic form: a type, or `[[choices...], {...}]`."""
    count = ["INT", {"default": 1, "min": 1, "max": settings.SD_MAX_COUNT}]
    size = {"default": 512, "step": 8}
    weight = ["FLOAT", {"default": 1.0, "min": -MAX_WEIGHT, "max": MAX_WEIGHT, "step": 0.01}]
    return {
        "CheckpointLoaderSimple": {"ckpt_name": [checkpoint_names(), {}]},
        "CLIPTextEncode": {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
            "clip": ["CLIP"],
        },
        "EmptyLatentImage": {
            "width": spec_number("width", "INT", **size),
            "height": spec_number("height", "INT", **size),
            "batch_size": count,
        },
        "KSampler": {
            "model": ["MODEL"],
            "seed": ["INT", {"default": 0, "min": 0, "max": COMFYUI_SEED_MAX}],
            "steps": spec_number("steps", "INT"),
            "cfg": spec_number("guidance_scale", "FLOAT", step=0.1, round=0.01),
            "sampler_name": [list(SAMPLERS), {}],
            "scheduler": [list(SCHEDULES), {}],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        },
        "VAEDecode": {"samples": ["LATENT"], "vae": ["VAE"]},
        "VAEEncode": {"pixels": ["IMAGE"], "vae": ["VAE"]},
        "SaveImage": {
            "images": ["IMAGE"],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
        },
        "LoadImage": {"image": [sorted(uploads), {"image_upload": True}]},
        "LoraLoader": {
            "model": ["MODEL"],
            "clip": ["CLIP"],
            "lora_name": [lora_names(), {}],
            "strength_model": weight,
            "strength_clip": weight,
        },
        "UNETLoader": {"unet_name": [[], {}], "weight_dtype": [["default"], {}]},
        "VAELoader": {"vae_name": [vae_names(), {}]},
    }[name]


OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",),
    "EmptyLatentImage": ("LATENT",),
    "KSampler": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "VAEEncode": ("LATENT",),
    "SaveImage": (),
    "LoadImage": ("IMAGE", "MASK"),
    "LoraLoader": ("MODEL", "CLIP"),
    "UNETLoader": ("MODEL",),
    "VAELoader": ("VAE",),
}
TITLES = {
    "CheckpointLoaderSimple": ("Load Checkpoint", "loaders"),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", "conditioning"),
    "EmptyLatentImage": ("Empty Latent Image", "latent"),
    "KSampler": ("KSampler", "sampling"),
    "VAEDecode": ("VAE Decode", "latent"),
    "VAEEncode": ("VAE Encode", "latent"),
    "SaveImage": ("Save Image", "image"),
    "LoadImage": ("Load Image", "image"),
    "LoraLoader": ("Load LoRA", "loaders"),
    "UNETLoader": ("Load Diffusion Model", "advanced/loaders"),
    "VAELoader": ("Load VAE", "loaders"),
}


def object_info(name: str, uploads=()) -> dict:
    """One node's entry of GET /object_info."""
    inputs = node_inputs(name, uploads)
    outputs = OUTPUTS[name]
    title, category = TITLES[name]
    return {
        "input": {"required": inputs},
        "input_order": {"required": list(inputs)},
        "output": list(outputs),
        "output_is_list": [False] * len(outputs),
        "output_name": list(outputs),
        "name": name,
        "display_name": title,
        "description": "" if name in ACCEPTED else "Listed only: sdsite refuses it in a workflow.",
        "python_module": "nodes",
        "category": category,
        "output_node": name == "SaveImage",
    }


class WorkflowError(Exception):
    """A workflow sdsite cannot run; `body` is ComfyUI's error for it (a 400)."""

    def __init__(self, body: dict):
        super().__init__(body["error"]["message"])
        self.body = body


def refuse(
    kind: str, message: str, details: str = "", node_errors=None, field: str = "prompt"
) -> WorkflowError:
    return WorkflowError(comfyui_error_body(message, kind, details, node_errors, field))


def node_error(workflow, node_id: str, input_name: str, message: str, save: str = ""):
    """ComfyUI's `prompt_outputs_failed_validation`, for one input of one node."""
    node = workflow.get(node_id) if isinstance(workflow, dict) else None
    class_type = node.get("class_type", "") if isinstance(node, dict) else ""
    class_type = class_type if isinstance(class_type, str) else ""
    errors = {
        node_id: {
            "errors": [
                {
                    "type": "value_not_valid",
                    "message": f"{class_type}.{input_name}: {message}",
                    "details": f"{input_name}: {message}",
                    "extra_info": {"input_name": input_name},
                }
            ],
            "dependent_outputs": [save] if save else [],
            "class_type": class_type,
        }
    }
    return refuse(
        "prompt_outputs_failed_validation",
        "Prompt outputs failed validation",
        f"{class_type} (node {node_id}).{input_name}: {message}",
        errors,
        field=None,
    )


@dataclass
class Plan:
    """What a workflow asks for: the form's data, the input image's name, the batch size and
    the node ids by role (`loader`, `positive`, `negative`, `latent`, `sampler`, `decode`,
    `save`, and `load_image`, `encode`, `loras` when present)."""

    data: dict = field(default_factory=dict)
    image_name: str | None = None
    count: int = 1
    nodes: dict = field(default_factory=dict)

    def where(self, form_field: str) -> tuple[str, str]:
        """The node id and input a form field came from."""
        nodes = self.nodes
        return {
            "prompt": (nodes["positive"], "text"),
            "negative_prompt": (nodes["negative"], "text"),
            "steps": (nodes["sampler"], "steps"),
            "guidance_scale": (nodes["sampler"], "cfg"),
            "seed": (nodes["sampler"], "seed"),
            "scheduler": (nodes["sampler"], "sampler_name"),
            "schedule_type": (nodes["sampler"], "scheduler"),
            "strength": (nodes["sampler"], "denoise"),
            "width": (nodes["latent"], "width"),
            "height": (nodes["latent"], "height"),
            "count": (nodes["latent"], "batch_size"),
            "model": (nodes["loader"], "ckpt_name"),
            "init_image": (nodes.get("load_image", nodes["latent"]), "image"),
        }.get(form_field, (nodes["save"], "images"))


def used_seed(seed: int) -> int:
    """The seed sdsite uses for a ComfyUI seed (0 to 2**64 - 1): itself up to MAX_SEED,
    else its remainder modulo MAX_SEED + 1."""
    return seed % (MAX_SEED + 1)


class Reader:
    """Reads one workflow: each node's inputs typed, each link followed to the node it
    names."""

    def __init__(self, workflow):
        if not isinstance(workflow, dict) or not workflow:
            raise refuse("no_prompt", "No prompt provided", "Send the workflow as `prompt`.")
        if len(workflow) > MAX_NODES:
            raise refuse("invalid_prompt", f"The workflow has over {MAX_NODES} nodes.")
        for node_id, node in workflow.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if not isinstance(class_type, str):
                raise refuse(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if class_type not in ACCEPTED:
                raise refuse(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type[:100]} is not supported: sdsite "
                    f"takes {', '.join(ACCEPTED)} (see docs/comfyui.md).",
                    f"Node ID '#{node_id}'",
                    {
                        node_id: {
                            "errors": [
                                {
                                    "type": "node_not_supported",
                                    "message": f"{class_type[:100]} is not supported by sdsite",
                                    "details": f"Node ID '#{node_id}'",
                                    "extra_info": {"class_type": class_type[:100]},
                                }
                            ],
                            "dependent_outputs": [],
                            "class_type": class_type[:100],
                        }
                    },
                )
            if not isinstance(node.get("inputs", {}), dict):
                raise refuse("invalid_prompt", "A node's inputs must be an object.", node_id)
        self.workflow = workflow
        saves = [i for i, node in workflow.items() if node["class_type"] == "SaveImage"]
        if len(saves) != 1:
            raise refuse(
                "prompt_no_outputs",
                "Prompt has no outputs" if not saves else "sdsite takes one SaveImage node.",
            )
        self.save = saves[0]

    def value(self, node_id: str, name: str, kind: type | tuple, default=None):
        """The node's input `name`, of type `kind` (a number or a text, never a link)."""
        inputs = self.workflow[node_id].get("inputs", {})
        value = inputs.get(name, default)
        if value is None:
            raise node_error(self.workflow, node_id, name, "Required input is missing", self.save)
        if isinstance(value, bool) or not isinstance(value, kind):
            wanted = "a number" if kind in (int, (int, float)) else "a string"
            if isinstance(value, list):
                wanted += " (sdsite takes no link here)"
            raise node_error(self.workflow, node_id, name, f"Must be {wanted}.", self.save)
        return value

    def link(self, node_id: str, name: str, classes: tuple, output: int) -> str:
        """The id of the node that input `name` links to, one of `classes`, from `output`."""
        inputs = self.workflow[node_id].get("inputs", {})
        value = inputs.get(name)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str | int)
            or isinstance(value[1], bool)
            or not isinstance(value[1], int)
        ):
            raise node_error(
                self.workflow, node_id, name, "Must be a link: [node id, output].", self.save
            )
        target = str(value[0])
        node = self.workflow.get(target)
        if node is None:
            raise node_error(
                self.workflow, node_id, name, f"Links to node {target[:20]}, which is missing.",
                self.save,
            )  # fmt: skip
        if node["class_type"] not in classes or value[1] != output:
            wanted = " or ".join(classes)
            raise node_error(
                self.workflow, node_id, name,
                f"sdsite takes {wanted} (output {output}) here, not {node['class_type']} "
                f"(output {value[1]}).",
                self.save,
            )  # fmt: skip
        return target

    def loader_through_loras(self, node_id: str, name: str, output: int, loras: list) -> str:
        """Follow `name` through any LoraLoaders to the CheckpointLoaderSimple; `loras` gets
        the LoraLoaders met, nearest first."""
        target = self.link(node_id, name, ("LoraLoader", "CheckpointLoaderSimple"), output)
        while self.workflow[target]["class_type"] == "LoraLoader":
            if target in loras or len(loras) >= MAX_LORAS:
                raise node_error(
                    self.workflow, target, "model", f"At most {MAX_LORAS} LoRA, in a line.",
                    self.save,
                )  # fmt: skip
            loras.append(target)
            inputs = ("model", "clip")[output]
            target = self.link(target, inputs, ("LoraLoader", "CheckpointLoaderSimple"), output)
        return target


def plan_of(workflow) -> Plan:
    """The job a workflow asks for, or WorkflowError with ComfyUI's error body."""
    read = Reader(workflow)
    plan = Plan()
    nodes = plan.nodes
    nodes["save"] = read.save
    nodes["decode"] = read.link(read.save, "images", ("VAEDecode",), 0)
    nodes["sampler"] = sampler = read.link(nodes["decode"], "samples", ("KSampler",), 0)
    loras: list[str] = []
    nodes["loader"] = loader = read.loader_through_loras(sampler, "model", 0, loras)
    nodes["loras"] = list(reversed(loras))  # in the order they apply
    for role in ("positive", "negative"):
        nodes[role] = read.link(sampler, role, ("CLIPTextEncode",), 0)
        clip_loras: list[str] = []
        if read.loader_through_loras(nodes[role], "clip", 1, clip_loras) != loader:
            raise node_error(workflow, nodes[role], "clip", "One checkpoint only.", read.save)
    loaders = [read.link(nodes["decode"], "vae", ("CheckpointLoaderSimple",), 2)]
    latent = read.link(sampler, "latent_image", ("EmptyLatentImage", "VAEEncode"), 0)
    nodes["latent"] = latent
    data = plan.data
    denoise = read.value(sampler, "denoise", (int, float), 1.0)  # checked in either graph
    if workflow[latent]["class_type"] == "VAEEncode":
        nodes["encode"] = latent
        nodes["load_image"] = read.link(latent, "pixels", ("LoadImage",), 0)
        loaders.append(read.link(latent, "vae", ("CheckpointLoaderSimple",), 2))
        plan.image_name = read.value(nodes["load_image"], "image", str)
        data["strength"] = denoise  # from text, sdsite always denoises fully
    else:
        data["width"] = read.value(latent, "width", int)
        data["height"] = read.value(latent, "height", int)
        plan.count = read.value(latent, "batch_size", int, 1)
    if any(other != loader for other in loaders):
        raise node_error(workflow, nodes["decode"], "vae", "One checkpoint only.", read.save)
    ckpt_name = read.value(loader, "ckpt_name", str)
    if ckpt_name:
        data["model"] = model_of(ckpt_name)
    seed = read.value(sampler, "seed", int)
    if not 0 <= seed <= COMFYUI_SEED_MAX:
        raise node_error(
            workflow, sampler, "seed", f"Must be from 0 to {COMFYUI_SEED_MAX}.", read.save
        )
    data["seed"] = used_seed(seed)
    data["steps"] = read.value(sampler, "steps", int)
    data["guidance_scale"] = read.value(sampler, "cfg", (int, float))
    data["scheduler"] = listed(workflow, read, sampler, "sampler_name", SAMPLERS)
    data["schedule_type"] = listed(workflow, read, sampler, "scheduler", SCHEDULES)
    tags = [lora_tag(read, node) for node in nodes["loras"]]
    positive = read.value(nodes["positive"], "text", str)
    data["prompt"] = " ".join([positive, *(tag for tag in tags if tag)]).strip()
    data["negative_prompt"] = read.value(nodes["negative"], "text", str)
    return plan


def lora_tag(read: Reader, node_id: str) -> str:
    """A LoraLoader as the prompt's `<lora:name:weight>` (sdsite's LoRA mechanism); its
    `strength_clip` is not applied apart: sdsite weighs a LoRA once."""
    name = read.value(node_id, "lora_name", str)
    stem = PurePosixPath(name).stem if name.endswith(".safetensors") else name
    if stem not in available_loras():
        raise node_error(
            read.workflow, node_id, "lora_name",
            f"Value not in list: {name[:100]!r} not in {lora_names()}", read.save,
        )  # fmt: skip
    weight = read.value(node_id, "strength_model", (int, float), 1.0)
    read.value(node_id, "strength_clip", (int, float), 1.0)
    return f"<lora:{stem}:{weight:g}>" if weight else ""


def image_entry(name: str) -> dict:
    """A stored image as ComfyUI's outputs name one: its file name and storage folder (a
    name within the media storage, never a server path)."""
    folder, _, filename = name.rpartition("/")
    return {"filename": filename, "subfolder": folder, "type": "output"}


def listed(workflow: dict, read, node: str, field: str, table: dict) -> str:
    """sdsite's name for the choice a node's input names from `table` (ComfyUI's names), or
    ComfyUI's "Value not in list" error naming the node and input."""
    value = read.value(node, field, str)
    if value not in table:
        raise node_error(
            workflow, node, field,
            f"Value not in list: {value[:100]!r} not in {list(table)}", read.save,
        )  # fmt: skip
    return table[value]
