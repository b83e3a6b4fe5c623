"""ComfyUI workflows read into one job's parameters (`comfyui_nodes.plan_of`): the graphs the
clients send, and the hostile ones (cycles, dangling links, oversized, wrong types), each
refused with ComfyUI's error naming the node. Pure reading: no database, no server."""

import copy
import json
from pathlib import Path

import pytest

from generator.dialects.comfyui_nodes import (
    MAX_LORAS,
    MAX_NODES,
    WorkflowError,
    object_info,
    plan_of,
    used_seed,
)

pytestmark = pytest.mark.any_database

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
OPEN_WEBUI = json.loads((FIXTURES / "open_webui_txt2img.json").read_text())["workflow"]
IMG2IMG_LORA = json.loads((FIXTURES / "img2img_lora.json").read_text())["workflow"]


def refusal(workflow) -> dict:
    with pytest.raises(WorkflowError) as refused:
        plan_of(workflow)
    return refused.value.body


def test_open_webui_s_default_graph():
    plan = plan_of(OPEN_WEBUI)
    assert plan.data == {
        "width": 512, "height": 512, "model": "model.safetensors", "seed": 0, "steps": 20,
        "guidance_scale": 8, "scheduler": "Euler", "schedule_type": "Automatic",
        "prompt": "Prompt", "negative_prompt": "",
    }  # fmt: skip
    assert plan.count == 1 and plan.image_name is None
    assert plan.nodes == {
        "save": "9", "decode": "8", "sampler": "3", "loader": "4", "loras": [],
        "positive": "6", "negative": "7", "latent": "5",
    }  # fmt: skip


def test_img2img_with_a_lora_and_the_seed_past_sdsite_s_range():
    plan = plan_of(IMG2IMG_LORA)
    assert plan.image_name == "example.png"
    assert plan.data["strength"] == 0.5 and "width" not in plan.data
    assert plan.data["prompt"] == "a circle <lora:demo-swap:1>"
    assert plan.data["seed"] == used_seed(280823642470253) == 280823642470253 % 2**32
    assert (plan.nodes["load_image"], plan.nodes["encode"], plan.nodes["loras"]) == (
        "2",
        "3",
        ["10"],
    )


def test_positive_and_negative_follow_the_wiring_not_the_ids():
    workflow = copy.deepcopy(OPEN_WEBUI)
    workflow["3"]["inputs"] |= {"positive": ["7", 0], "negative": ["6", 0]}
    workflow["7"]["inputs"]["text"] = "a cat"
    plan = plan_of(workflow)
    assert (plan.data["prompt"], plan.data["negative_prompt"]) == ("a cat", "Prompt")


def test_two_loras_in_a_line_apply_in_order_and_a_zero_weight_drops_out():
    workflow = copy.deepcopy(IMG2IMG_LORA)
    workflow["11"] = copy.deepcopy(workflow["10"])
    workflow["11"]["inputs"] |= {"model": ["10", 0], "clip": ["10", 1], "strength_model": 0.5}
    workflow["4"]["inputs"]["model"] = ["11", 0]
    assert plan_of(workflow).data["prompt"] == "a circle <lora:demo-swap:1> <lora:demo-swap:0.5>"
    workflow["11"]["inputs"]["strength_model"] = 0
    assert plan_of(workflow).data["prompt"] == "a circle <lora:demo-swap:1>"


def node_error_of(workflow) -> tuple[str, str, str]:
    """(node id, input name, message) of a refusal for one input."""
    body = refusal(workflow)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    ((node, error),) = body["node_errors"].items()
    return node, error["errors"][0]["extra_info"]["input_name"], error["errors"][0]["details"]


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda w: w["3"]["inputs"].update(model=["3", 0]), ("3", "model")),  # a loop
        (lambda w: w["3"]["inputs"].update(latent_image=["99", 0]), ("3", "latent_image")),
        (lambda w: w["3"]["inputs"].update(positive="text"), ("3", "positive")),
        (lambda w: w["8"]["inputs"].update(vae=["4", 1]), ("8", "vae")),  # CLIP, not VAE
        (lambda w: w["6"]["inputs"].update(text=["7", 0]), ("6", "text")),  # a link for a text
        (lambda w: w["3"]["inputs"].update(seed=-1), ("3", "seed")),
        (lambda w: w["3"]["inputs"].update(seed=2**64), ("3", "seed")),
        (lambda w: w["3"]["inputs"].update(steps="20"), ("3", "steps")),
        (lambda w: w["3"]["inputs"].update(cfg=True), ("3", "cfg")),
        (lambda w: w["3"]["inputs"].update(scheduler="ddim_uniform"), ("3", "scheduler")),
        (lambda w: w["5"]["inputs"].pop("width"), ("5", "width")),
    ],
)
def test_a_bad_input_is_refused_naming_its_node_and_input(change, where):
    workflow = copy.deepcopy(OPEN_WEBUI)
    change(workflow)
    assert node_error_of(workflow)[:2] == where


def test_a_second_checkpoint_a_cycle_of_loras_and_an_unknown_lora_are_refused():
    workflow = copy.deepcopy(OPEN_WEBUI)
    workflow["40"] = copy.deepcopy(workflow["4"])
    workflow["7"]["inputs"]["clip"] = ["40", 1]
    assert node_error_of(workflow)[:2] == ("7", "clip")

    looped = copy.deepcopy(IMG2IMG_LORA)
    looped["10"]["inputs"]["model"] = ["10", 0]
    assert node_error_of(looped)[0] == "10"

    chained = copy.deepcopy(IMG2IMG_LORA)
    for n in range(MAX_LORAS + 1):
        chained[f"l{n}"] = copy.deepcopy(chained["10"])
        chained[f"l{n}"]["inputs"]["model"] = [f"l{n - 1}" if n else "10", 0]
    chained["4"]["inputs"]["model"] = [f"l{MAX_LORAS}", 0]
    assert "At most" in node_error_of(chained)[2]

    unknown = copy.deepcopy(IMG2IMG_LORA)
    unknown["10"]["inputs"]["lora_name"] = "../../etc/passwd"
    assert node_error_of(unknown)[:2] == ("10", "lora_name")


@pytest.mark.parametrize(
    "workflow, kind",
    [
        ({}, "no_prompt"),
        ([], "no_prompt"),
        ("a workflow", "no_prompt"),
        ({"1": {"inputs": {}}}, "invalid_prompt"),
        ({"1": {"class_type": "KSamplerAdvanced", "inputs": {}}}, "invalid_prompt"),
        ({str(n): {"class_type": "SaveImage"} for n in range(MAX_NODES + 1)}, "invalid_prompt"),
        ({"1": {"class_type": "VAEDecode", "inputs": {}}}, "prompt_no_outputs"),
    ],
)
def test_what_is_no_workflow_sdsite_takes(workflow, kind):
    assert refusal(workflow)["error"]["type"] == kind


def test_an_unsupported_node_is_named_even_among_supported_ones():
    workflow = copy.deepcopy(OPEN_WEBUI)
    workflow["12"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "x"}}
    body = refusal(workflow)
    assert "UNETLoader" in body["error"]["message"] and body["error"]["details"] == "Node ID '#12'"
    assert body["node_errors"]["12"]["class_type"] == "UNETLoader"


def test_object_info_bounds_come_from_the_parameter_spec():
    sampler = object_info("KSampler")["input"]["required"]
    assert sampler["steps"] == ["INT", {"default": 20, "min": 1, "max": 150}]
    assert sampler["cfg"][1] == {"default": 7.5, "min": 0, "max": 30, "step": 0.1, "round": 0.01}
    latent = object_info("EmptyLatentImage")["input"]["required"]
    assert latent["width"] == ["INT", {"default": 512, "min": 64, "max": 2048, "step": 8}]
    assert object_info("SaveImage")["output_node"] is True
    assert object_info("LoadImage", ["b.png", "a.png"])["input"]["required"]["image"][0] == [
        "a.png", "b.png",
    ]  # fmt: skip
