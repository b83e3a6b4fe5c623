"""A1111's folders: what the scan lists, which family each checkpoint is, and what it says
of a file it cannot use (never an exception, never a server path)."""

import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from generator.pipelines import checkpoints
from generator.pipelines.checkpoints import UNET_IN, family_of, scan

SD1_KEYS = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 4)}
SD2_KEYS = {"cond_stage_model.model.token_embedding.weight": (8, 4)}
SDXL_KEYS = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 4),
    "conditioner.embedders.1.model.token_embedding.weight": (8, 4),
}
NOT_ZIP = (
    "not a PyTorch zip file (truncated, or an old-style pickle, which is not loaded because a "
    "pickle can run code: convert it to .safetensors)"
)
REFINER_KEYS = {"conditioner.embedders.0.model.token_embedding.weight": (8, 4)}


def write_checkpoint(path, text_keys, in_channels=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: torch.zeros(shape) for key, shape in text_keys.items()}
    tensors[UNET_IN] = torch.zeros(2, in_channels, 1, 1)
    save_file(tensors, path)
    return path


@pytest.fixture
def webui(tmp_path, settings):
    settings.SD_CHECKPOINT_DIR = tmp_path / "models" / "Stable-diffusion"
    settings.SD_VAE_DIR = tmp_path / "models" / "VAE"
    settings.SD_EMBEDDINGS_DIR = tmp_path / "embeddings"
    settings.SD_CHECKPOINT_DIR.mkdir(parents=True)
    checkpoints._examine.cache_clear()
    return settings.SD_CHECKPOINT_DIR


@pytest.mark.any_database
@pytest.mark.parametrize(
    "keys, in_channels, family",
    [
        (SD1_KEYS, 4, "sd1"),
        (SD1_KEYS, 9, "sd1-inpainting"),
        (SD2_KEYS, 4, "sd2-v"),
        (SD2_KEYS, 9, "sd2-inpainting"),
        (SDXL_KEYS, 4, "sdxl"),
        (SDXL_KEYS, 9, "sdxl-inpainting"),
        (REFINER_KEYS, 4, "sdxl-refiner"),
    ],
)
def test_a_checkpoints_family_is_told_by_its_tensors_names_and_shapes(
    webui, keys, in_channels, family
):
    write_checkpoint(webui / "model.safetensors", keys, in_channels)
    [found] = scan("checkpoint")
    assert (found.family, found.problem) == (family, None)


@pytest.mark.any_database
def test_a_state_dict_gives_the_same_family_as_a_header():
    tensors = {key: torch.zeros(shape) for key, shape in SDXL_KEYS.items()}
    tensors[UNET_IN] = torch.zeros(2, 4, 1, 1)
    assert family_of(tensors) == "sdxl"
    assert family_of({"something.else": torch.zeros(1)}) is None


@pytest.mark.any_database
def test_subfolders_are_scanned_and_names_keep_them_as_a1111_does(webui):
    write_checkpoint(webui / "sd15" / "dream shaper.safetensors", SD1_KEYS)
    write_checkpoint(webui / "Base.safetensors", SDXL_KEYS)
    (webui / "notes.txt").write_text("not a model")
    (webui / ".hidden").mkdir()
    write_checkpoint(webui / ".hidden" / "x.safetensors", SD1_KEYS)
    found = scan("checkpoint")
    assert [(f.name, f.model_name, f.family) for f in found] == [
        ("Base.safetensors", "Base", "sdxl"),
        ("sd15/dream shaper.safetensors", "sd15_dream shaper", "sd1"),
    ]


@pytest.mark.any_database
def test_broken_and_truncated_files_are_listed_as_unusable_with_their_reason(webui, tmp_path):
    whole = write_checkpoint(webui / "whole.safetensors", SD1_KEYS)
    data = whole.read_bytes()
    (webui / "truncated.safetensors").write_bytes(data[:-3])
    (webui / "cut-in-header.safetensors").write_bytes(data[:20])
    (webui / "empty.safetensors").write_bytes(b"")
    (webui / "huge-header.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    (webui / "not-json.safetensors").write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{[")
    bad_offsets = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": "x"}})
    (webui / "bad-offsets.safetensors").write_bytes(
        len(bad_offsets).to_bytes(8, "little") + bad_offsets.encode()
    )
    (webui / "old-pickle.ckpt").write_bytes(b"\x80\x02}q\x00.")
    torch.save({"state_dict": {}}, webui / "whole.ckpt")
    (webui / "truncated.ckpt").write_bytes((webui / "whole.ckpt").read_bytes()[:-30])
    with zipfile.ZipFile(webui / "no-pickle.ckpt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    problems = {f.name: f.problem for f in scan("checkpoint")}
    size = len(data)
    assert problems == {
        "bad-offsets.safetensors": "not a safetensors file (tensor 'a' has no valid offsets)",
        "cut-in-header.safetensors": (
            f"truncated: its header needs {int.from_bytes(data[:8], 'little') + 8} bytes, "
            "the file has 20"
        ),
        "empty.safetensors": "not a safetensors file (shorter than its header's length)",
        "huge-header.safetensors": "not a safetensors file (its header's length is past 100 MB)",
        "no-pickle.ckpt": "not a PyTorch checkpoint (no data.pkl in the zip file)",
        "not-json.safetensors": "not a safetensors file (its header is not JSON)",
        "old-pickle.ckpt": NOT_ZIP,
        "truncated.ckpt": NOT_ZIP,
        "truncated.safetensors": (
            f"truncated: its tensors need {size} bytes, the file has {size - 3}"
        ),
        "whole.ckpt": None,
        "whole.safetensors": None,
    }
    assert not any(str(tmp_path) in (p or "") for p in problems.values())


@pytest.mark.any_database
def test_each_kind_has_its_own_folder_and_a_missing_one_lists_nothing(webui, settings):
    write_checkpoint(settings.SD_VAE_DIR / "kl-f8.safetensors", {"encoder.conv_in.weight": (2, 3)})
    assert [f.name for f in scan("vae")] == ["kl-f8.safetensors"]
    assert scan("checkpoint") == [] and scan("embedding") == []
    settings.SD_CONTROLNET_DIR = None
    assert scan("controlnet") == []


@pytest.mark.any_database
def test_sd_webui_dir_gives_each_kind_its_a1111_folder_unless_the_kind_has_its_own(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "from django.conf import settings; import django; django.setup(); "
        "print([str(getattr(settings, k)) for k in ('SD_CHECKPOINT_DIR', 'SD_VAE_DIR', "
        "'SD_LORA_DIR', 'SD_EMBEDDINGS_DIR', 'SD_ESRGAN_DIR', 'SD_CONTROLNET_DIR', "
        "'SD_REALESRGAN_DIR', 'SD_SWINIR_DIR', 'SD_DAT_DIR', 'SD_UPSCALER_DIR')])"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sdsite.settings", "DATA_DIR": str(tmp_path)}
    env.update(SD_WEBUI_DIR=str(tmp_path / "webui"), SD_VAE_DIR=str(tmp_path / "vaes"))
    env.update(SD_UPSCALER_DIR=str(tmp_path / "upscalers"))  # A1111 has no such folder
    env.pop("SD_CHECKPOINT_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    webui = tmp_path / "webui"
    assert out.stdout.strip() == str(
        [str(webui / "models/Stable-diffusion"), str(tmp_path / "vaes"),
         str(webui / "models/Lora"), str(webui / "embeddings"), str(webui / "models/ESRGAN"),
         str(webui / "models/ControlNet"), str(webui / "models/RealESRGAN"),
         str(webui / "models/SwinIR"), str(webui / "models/DAT"), str(tmp_path / "upscalers")]
    ), out.stderr  # fmt: skip


@pytest.mark.any_database
def test_a_bad_sd_models_entry_is_one_line_of_check_and_the_page_still_answers(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sdsite.settings", "DATA_DIR": str(tmp_path)}
    env["SD_MODELS"] = "demo, ./no-such-folder, stabilityai/sd turbo"
    out = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "sdsite.W032" in line]
    assert sorted(lines) == [
        "?: (sdsite.W032) SD_MODELS: 'stabilityai/sd turbo' is neither a folder, a checkpoint "
        "nor a Hugging Face hub id (owner/name, letters, digits, '-', '_' and '.').",
        "?: (sdsite.W032) SD_MODELS: The model folder ./no-such-folder does not exist on this "
        "worker.",
    ]
    page = (
        "from generator.services import model_form_settings as s; "
        "print(s('stabilityai/sd turbo')['width'])"
    )
    code = f"import django; django.setup(); {page}"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == "512", shown.stderr
