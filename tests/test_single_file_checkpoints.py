"""Single-file checkpoints load offline, into exactly the weights they hold; a `.ckpt` loads
only through the restricted unpickler, which refuses a pickle that would run code."""

import shutil

import numpy
import pytest
import torch
from safetensors.torch import save_file

from generator.pipelines import checkpoints, demo, single_file
from generator.pipelines.checkpoints import Unusable
from tests.support.single_file_models import ldm_state_dict


@pytest.fixture(scope="session")
def demo_pipe():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(demo.WEIGHTS)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory, demo_pipe):
    """The demo model as an SD 1.x single file, with its config folder beside it."""
    folder = tmp_path_factory.mktemp("checkpoints")
    path = folder / "demo-sd1.safetensors"
    save_file(ldm_state_dict(demo_pipe), path)
    shutil.copytree(
        demo.WEIGHTS, folder / (path.name + ".config"),
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
    )  # fmt: skip
    return path


def with_config(path, source):
    shutil.copytree(
        source.with_name(source.name + ".config"), path.with_name(path.name + ".config")
    )
    return path


def same_weights(a, b) -> None:
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sorted(mine) == sorted(theirs), part
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part


@pytest.mark.any_database
def test_a_single_file_checkpoint_loads_offline_into_exactly_the_weights_it_holds(
    demo_checkpoint, demo_pipe, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert single_file.checkpoint_family(demo_checkpoint) == "sd1"
    loaded = single_file.load_pipeline(demo_checkpoint, torch.float32)
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    same_weights(loaded, demo_pipe)


class FakeLightningCheckpoint:
    """What pytorch_lightning leaves in a training run's checkpoint."""

    def __init__(self):
        self.monitor = None


@pytest.mark.any_database
def test_a_ckpt_holding_what_real_checkpoints_hold_loads_through_the_restricted_unpickler(
    demo_checkpoint, demo_pipe, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    FakeLightningCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    FakeLightningCheckpoint.__qualname__ = "ModelCheckpoint"
    modules = __import__("sys").modules
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", FakeLightningCheckpoint.__module__]
    for name in names:
        monkeypatch.setitem(modules, name, type(numpy)(name))
    modules[names[-1]].ModelCheckpoint = FakeLightningCheckpoint
    path = with_config(tmp_path / "demo.ckpt", demo_checkpoint)
    torch.save(
        {
            "state_dict": load_file(demo_checkpoint),
            "global_step": numpy.int64(840000),
            "epoch": numpy.array([6]),
            "callbacks": {"ModelCheckpoint": FakeLightningCheckpoint()},
            "seen": {1, 2},
        },
        path,
    )
    for name in names:
        monkeypatch.delitem(modules, name)  # as on a server, without pytorch_lightning
    assert checkpoints.describe("checkpoint", path, "demo.ckpt").problem is None
    assert single_file.checkpoint_family(path) == "sd1"
    same_weights(single_file.load_pipeline(path, torch.float32), demo_pipe)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.any_database
def test_a_pickle_that_would_run_code_is_refused_with_its_reason_and_never_runs(
    demo_checkpoint, tmp_path
):
    from safetensors.torch import load_file

    marker = tmp_path / "ran"
    path = with_config(tmp_path / "evil.ckpt", demo_checkpoint)
    torch.save({"state_dict": load_file(demo_checkpoint), "x": RunsCode(marker)}, path)
    refused = (
        "refused: its pickle asks for exec, which is not part of a model's weights "
        "(a pickle that runs code?)"
    )
    with pytest.raises(Unusable) as family_error:
        single_file.checkpoint_family(path)
    assert str(family_error.value) == refused
    with pytest.raises(Unusable) as load_error:
        single_file.load_pipeline(path, torch.float32)
    assert str(load_error.value) == refused
    assert not marker.exists()


@pytest.mark.any_database
def test_the_shipped_clip_vocabulary_tokenizes_as_clip_does(settings, tmp_path):
    from transformers import CLIPTokenizer

    settings.MODELS_DIR = tmp_path
    single_file.config_folder.cache_clear()
    folder = single_file.config_folder("sd1")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.convert_ids_to_tokens([49406, 49407]) == ["<|startoftext|>", "<|endoftext|>"]
    sd2 = CLIPTokenizer.from_pretrained(single_file.config_folder("sd2-v") / "tokenizer")
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0
    single_file.config_folder.cache_clear()


@pytest.mark.any_database
@pytest.mark.parametrize(
    "family, pipeline, in_channels, cross_attention, prediction",
    [
        ("sd1", "StableDiffusionPipeline", 4, 768, "epsilon"),
        ("sd1-inpainting", "StableDiffusionInpaintPipeline", 9, 768, "epsilon"),
        ("sd2-v", "StableDiffusionPipeline", 4, 1024, "v_prediction"),
        ("sd2-inpainting", "StableDiffusionInpaintPipeline", 9, 1024, "epsilon"),
        ("sdxl", "StableDiffusionXLPipeline", 4, 2048, "epsilon"),
        ("sdxl-inpainting", "StableDiffusionXLInpaintPipeline", 9, 2048, "epsilon"),
        ("sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", 4, 1280, "epsilon"),
    ],
)
def test_each_familys_shipped_config_builds_its_network(
    family, pipeline, in_channels, cross_attention, prediction
):
    import json

    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    folder = single_file.CONFIGS / family
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == pipeline
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == prediction
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    assert (unet.conv_in.in_channels, unet.config.cross_attention_dim) == (
        in_channels,
        cross_attention,
    )


@pytest.mark.any_database
def test_a_single_file_checkpoint_runs_on_openvino_and_draws_what_pytorch_draws(
    demo_checkpoint, settings, monkeypatch
):
    from huggingface_hub import constants

    from generator.pipelines import GenerationRequest, create_backend
    from generator.pipelines.openvino_ir import ir_cache_dir
    from tests.test_openvino import MAX_MEAN_ABS_PIXEL_DIFFERENCE

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    settings.SD_CHECKPOINT_DIR = demo_checkpoint.parent
    checkpoints._examine.cache_clear()
    request = GenerationRequest(
        prompt="a red circle", negative_prompt="", steps=4, guidance_scale=7.5, width=64,
        height=64, seed=3,
    )  # fmt: skip
    images, phases = {}, []
    for name in ("pytorch", "openvino"):
        backend = create_backend(name, demo_checkpoint.name, "cpu")
        backend.load(phases.append)
        image = backend.generate(request, lambda *args: True, lambda phase: None)
        images[name] = numpy.asarray(image, dtype=numpy.float64)
    assert phases == ["preparing OpenVINO model (first use)"]  # exported from the file
    difference = numpy.abs(images["pytorch"] - images["openvino"]).mean()
    print(f"single file, PyTorch vs OpenVINO: mean {difference:.3f} levels")  # noqa: T201
    assert difference < MAX_MEAN_ABS_PIXEL_DIFFERENCE
    cache = ir_cache_dir(demo_checkpoint.name, settings.SD_OPENVINO_PRECISION)
    assert (cache / "unet" / "openvino_model.xml").is_file()
    assert not list(cache.parent.glob(".single-file-*"))  # the converted folder went
