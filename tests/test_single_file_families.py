"""Tiny SD 2.x (v-prediction) and SDXL checkpoints written as single files in their original
(LDM) layout: the family is told from the keys, the file loads offline into exactly the
weights it came from (with its v-prediction schedule), and the backend draws the same picture
from it as from the folder it was written from. The tiny configs stand beside each file
(`<file>.config`): the shipped family configs are full-size."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from generator.pipelines import checkpoints, single_file
from generator.pipelines.base import GenerationRequest
from generator.pipelines.registry import create_backend
from tests import tiny_models
from tests.support.single_file_models import ldm_state_dict

REQUEST = GenerationRequest(
    prompt="a red circle", negative_prompt="", steps=2, guidance_scale=5.0, width=64, height=64,
    seed=3,
)  # fmt: skip


def picture(model: str) -> np.ndarray:
    backend = create_backend("pytorch", model, "cpu")
    backend.load(lambda phase: None)
    image = backend.generate(REQUEST, lambda *args: True, lambda phase: None)
    return np.asarray(image, dtype=np.float64)


@pytest.mark.any_database
@pytest.mark.parametrize(
    "build, family, pipeline_class, prediction",
    [
        (tiny_models.sd2_v, "sd2-v", "StableDiffusionPipeline", "v_prediction"),
        (tiny_models.sdxl_single_file, "sdxl", "StableDiffusionXLPipeline", "epsilon"),
    ],
)
def test_a_tiny_single_file_of_each_family_loads_offline_and_draws_its_folders_picture(
    build, family, pipeline_class, prediction, tmp_path, settings, monkeypatch
):
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    folder = build()
    pipe = DiffusionPipeline.from_pretrained(folder)
    settings.SD_CHECKPOINT_DIR = tmp_path
    checkpoints._examine.cache_clear()
    path = tmp_path / f"tiny-{family}.safetensors"
    save_file(ldm_state_dict(pipe), path)
    # The tiny networks' shapes: a diffusers folder without weights beside the file.
    shutil.copytree(
        folder, tmp_path / (path.name + ".config"),
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
    )  # fmt: skip
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    [listed] = checkpoints.scan("checkpoint")
    assert (listed.family, listed.problem) == (family, None)
    loaded = single_file.load_pipeline(path, torch.float32)
    assert type(loaded).__name__ == pipeline_class
    assert loaded.scheduler.config.prediction_type == prediction
    parts = [
        name
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if name in pipe.components
    ]
    for part in parts:
        mine, theirs = getattr(loaded, part).state_dict(), getattr(pipe, part).state_dict()
        assert sorted(mine) == sorted(theirs), part
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part

    from_file = picture(path.name)
    assert from_file.shape == (64, 64, 3) and from_file.std() > 0
    # The same weights, loaded another way: the same picture, to a level's rounding.
    assert np.abs(from_file - picture(str(folder))).max() <= 1
