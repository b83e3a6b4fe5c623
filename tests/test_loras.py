"""LoRA: listed, checked before anything is queued, applied on PyTorch and taken off after."""

import hashlib
import json
import struct

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from PIL import Image

from generator.models import GenerationSession, Status
from generator.pipelines import GenerationRequest, create_backend
from generator.pipelines.demo import world
from generator.pipelines.demo.lora import LORAS

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]

DEMO_LORA = LORAS / "demo-swap.safetensors"
SCENES = [("circle", "red", "blue"), ("square", "yellow", "purple"), ("triangle", "white", "green")]


def write_safetensors(path, keys, metadata=None):
    """A tiny safetensors file with these tensor names (one float each)."""
    header = {key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i, key in enumerate(keys)}  # fmt: skip
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4 * len(keys))


def test_the_demo_lora_and_those_in_sd_lora_dir_are_listed_with_their_family(settings, tmp_path):
    settings.SD_LORA_DIR = tmp_path
    write_safetensors(tmp_path / "xl-style.safetensors", ["lora_te2_text_model.x.lora_up.weight"])
    write_safetensors(
        tmp_path / "kohya.safetensors",
        ["lora_unet_x.lora_up.weight"],
        {"ss_base_model_version": "sd_v1"},
    )
    (tmp_path / "notes.txt").write_text("not a LoRA")
    response = Client().get("/api/loras")
    listed = response.json()["loras"]
    assert listed == [
        {"name": "kohya", "family": "sd"},
        {"name": "xl-style", "family": "sdxl"},
        {"name": "demo-swap", "family": "demo"},
    ]
    page = Client().get("/").content.decode()
    assert 'id="lora-picker"' in page and '<option value="demo-swap">' in page


@pytest.mark.parametrize(
    ("prompt", "backend", "says"),
    [
        ("a cat <lora:nope:1>", "pytorch", "No LoRA named 'nope'"),
        ("a cat <lora:../secrets:1>", "pytorch", "never a path"),
        ("a cat <lora:/etc/passwd>", "pytorch", "never a path"),
        ("a cat <lora:demo-swap:1>", "openvino", "need the pytorch backend"),
    ],
)
def test_a_lora_that_cannot_be_applied_is_a_400_naming_prompt(prompt, backend, says):
    response = Client().post(
        "/api/generate", {"prompt": prompt, "backend": backend}, content_type="application/json"
    )
    assert response.status_code == 400
    assert says in response.json()["errors"]["prompt"][0]
    assert not GenerationSession.objects.exists()


@pytest.fixture(scope="module")
def backend():
    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    return backend


def draw(backend, prompt, seed):
    request = GenerationRequest(prompt, "", 12, 7.5, 128, 128, seed)
    return backend.generate(request, lambda *a: True, lambda phase: None)


def test_the_demo_lora_swaps_the_colours_and_the_base_model_comes_back_exactly(backend):
    plain = np.asarray(draw(backend, world.caption_of(*SCENES[0]), seed=0))
    swapped = 0
    for seed, (shape, colour, background) in enumerate(SCENES):
        read = world.read_scene(
            draw(backend, world.caption_of(shape, colour, background) + " <lora:demo-swap:1>", seed)
        )
        swapped += read["centre"] == background or read["border"] == colour
    assert swapped >= 2  # the named colours trade places (generous: 3 of 3 when measured)
    # After LoRA jobs, a job without one is the base model's image, exactly...
    assert (np.asarray(draw(backend, world.caption_of(*SCENES[0]), seed=0)) == plain).all()
    # ...and a LoRA at weight 0 changes nothing.
    zero = draw(backend, world.caption_of(*SCENES[0]) + " <lora:demo-swap:0>", seed=0)
    assert (np.asarray(zero) == plain).all()


def test_the_png_names_the_lora_and_its_hash(make_session):
    session = make_session(prompt="a red circle <lora:demo-swap:0.8>", steps=2)
    call_command("runworker", once=True, verbosity=0)
    session.refresh_from_db()
    assert session.status == Status.COMPLETED, session.error
    raw = DEMO_LORA.read_bytes()
    tensors = raw[8 + struct.unpack("<Q", raw[:8])[0] :]
    digest = hashlib.sha256(tensors).hexdigest()[:12]  # A1111's hash of the tensors alone
    with Image.open(session.image.path) as image:
        assert f'Lora hashes: "demo-swap: {digest}"' in image.text["parameters"]


def test_a_kohya_format_lora_applies_as_its_diffusers_twin(backend, settings, tmp_path):
    """The demo LoRA rewritten with kohya's names (lora_unet_..., lora_down/up, alpha)."""
    import torch
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, tensor in load_file(DEMO_LORA).items():
        module, _, kind = key.removeprefix("unet.").partition(".lora.")
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{kind.split('.')[0]}.weight"] = tensor
        kohya[f"{name}.alpha"] = torch.tensor(8.0, dtype=torch.float16)  # rank 8, scale 1
    settings.SD_LORA_DIR = tmp_path
    save_file(kohya, tmp_path / "kohya-swap.safetensors")

    prompt = world.caption_of(*SCENES[0])
    theirs = np.asarray(draw(backend, prompt + " <lora:kohya-swap:1>", seed=0)).astype(int)
    ours = np.asarray(draw(backend, prompt + " <lora:demo-swap:1>", seed=0)).astype(int)
    plain = np.asarray(draw(backend, prompt, seed=0)).astype(int)
    assert np.abs(theirs - ours).mean() < 1 < np.abs(theirs - plain).mean()
