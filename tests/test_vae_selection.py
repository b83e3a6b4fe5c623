"""A1111's VAE choice: a VAE file of the folder changes the picture, per request
(`override_settings.sd_vae`) or as the caller's option (`POST /options`); the infotext names
it as A1111 does (`VAE hash`, `VAE`), with the embeddings' `TI hashes`, read back by A1111's
own rule and by sd-parsers; `Automatic` finds the checkpoint's own VAE file by its name."""

import base64
import hashlib
import io
import json

import httpx
import numpy as np
import pytest
import torch
from django.test import Client
from PIL import Image
from safetensors.torch import save_file

from generator.metadata import parse_a1111
from generator.pipelines import checkpoints, demo, vaes
from tests.support.processes import WebServer, WorkerProcess
from tests.support.single_file_models import ldm_vae_state_dict
from tests.test_checkpoint_folders import SD1_KEYS, write_checkpoint

pytestmark = pytest.mark.django_db(transaction=True)

BRIGHTER = 0.6
"""What the test VAE adds to its decoder's last bias: the picture's pixels rise by about
0.6 / 2 * 255 = 76 levels (clipped at white), against 0 for the same VAE unchanged."""


def bright_vae(path):
    """The demo model's VAE as an A1111 VAE file (LDM names, no prefix), decoding brighter."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(demo.WEIGHTS, subfolder="vae")
    tensors = ldm_vae_state_dict(vae, prefix="")
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + BRIGHTER
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def picture(answer) -> tuple[np.ndarray, str, dict]:
    assert answer.status_code == 200, answer.text
    data = base64.b64decode(answer.json()["images"][0])
    image = Image.open(io.BytesIO(data))
    info = json.loads(answer.json()["info"])
    return np.asarray(image.convert("RGB")).astype(float), image.info["parameters"], info


@pytest.mark.any_database
def test_a_vae_file_decodes_the_picture_and_the_infotext_names_it_and_the_embeddings(tmp_path):
    from sd_parsers import ParserManager

    webui = tmp_path / "webui"
    vae_file = bright_vae(webui / "models" / "VAE" / "bright.safetensors")
    (webui / "embeddings").mkdir()
    vector = torch.full((1, 64), 0.01)  # the demo's text encoder is 64 wide
    save_file({"emb_params": vector}, webui / "embeddings" / "embred.safetensors")
    vae_sha = hashlib.sha256(vae_file.read_bytes()).hexdigest()
    ti_sha = hashlib.sha256((webui / "embeddings" / "embred.safetensors").read_bytes()).hexdigest()

    web = WebServer(tmp_path, SD_WEBUI_DIR=webui, SD_API_AUTH="off")
    worker = WorkerProcess(tmp_path, SD_WEBUI_DIR=webui)
    try:
        with httpx.Client(base_url=web.url + "/sdapi/v1", timeout=600) as client:
            asked = {"prompt": "a red", "steps": 2, "width": 64, "height": 64, "seed": 3}

            def txt2img(**overrides):
                return client.post("/txt2img", json={**asked, "override_settings": overrides})

            assert client.get("/sd-vae").json() == [
                {"model_name": "bright.safetensors", "filename": "bright.safetensors"}
            ]
            own, own_text, _ = picture(txt2img(sd_vae="None"))
            assert "VAE" not in own_text
            bright, text, info = picture(txt2img(sd_vae="bright.safetensors"))
            assert 40 < (bright - own).mean() < 80
            assert f"Model: demo, VAE hash: {vae_sha[:10]}, VAE: bright.safetensors," in text
            assert info["sd_vae"] == "bright.safetensors"
            automatic, _, _ = picture(txt2img())  # a folder model has no VAE file of its own
            assert np.array_equal(automatic, own)

            # The caller's option (everyone's with API auth off), as A1111's loaded VAE.
            assert client.get("/options").json()["sd_vae"] == "Automatic"
            assert client.post("/options", json={"sd_vae": "bright.safetensors"}).json() is None
            assert client.get("/options").json()["sd_vae"] == "bright.safetensors"
            chosen, _, _ = picture(txt2img())
            assert np.array_equal(chosen, bright)
            assert client.post("/options", json={"sd_vae": "None"}).json() is None

            unknown = client.post("/options", json={"sd_vae": "nope.safetensors"})
            assert (unknown.status_code, unknown.json()["detail"]) == (
                422,
                "VAE not found: nope.safetensors",
            )
            refused = txt2img(sd_vae="nope.safetensors")
            assert refused.status_code == 422
            [problem] = refused.json()["detail"]
            assert problem["loc"][-1] == "override_settings.sd_vae"
            assert "No usable VAE named nope.safetensors" in problem["msg"]

            _, text, _ = picture(
                client.post(
                    "/txt2img",
                    json={**asked, "prompt": "a embred, red",
                          "override_settings": {"sd_vae": "bright.safetensors"}},
                )
            )  # fmt: skip
            assert f'TI hashes: "embred: {ti_sha[:12]}", Version: ' in text
            assert parse_a1111(text)["TI hashes"] == f"embred: {ti_sha[:12]}"
            png = Image.new("RGB", (1, 1))
            png.format, png.info = "PNG", {"parameters": text}
            parsed = ParserManager().parse(png)
            assert (parsed.metadata["VAE hash"], parsed.metadata["VAE"]) == (
                vae_sha[:10],
                "bright.safetensors",
            )
            assert str(tmp_path) not in text
    finally:
        worker.stop()
        web.stop()


@pytest.mark.any_database
def test_automatic_is_the_vae_file_named_like_the_checkpoint_and_none_is_its_own(
    tmp_path, settings
):
    settings.SD_CHECKPOINT_DIR = tmp_path / "Stable-diffusion"
    settings.SD_VAE_DIR = tmp_path / "VAE"
    checkpoints._examine.cache_clear()
    write_checkpoint(settings.SD_CHECKPOINT_DIR / "sd15" / "dream.safetensors", SD1_KEYS)
    write_checkpoint(settings.SD_CHECKPOINT_DIR / "other.safetensors", SD1_KEYS)
    write_checkpoint(settings.SD_VAE_DIR / "other.vae.pt.safetensors", {"decoder.x": (1, 1)})
    write_checkpoint(settings.SD_VAE_DIR / "sub" / "other.safetensors", {"decoder.x": (1, 1)})
    write_checkpoint(settings.SD_VAE_DIR / "kl-f8.safetensors", {"decoder.x": (1, 1)})
    # Not found: nothing named like it; its own file beside it is.
    assert vaes.resolve("Automatic", "sd15/dream.safetensors") is None
    beside = settings.SD_CHECKPOINT_DIR / "sd15" / "dream.vae.safetensors"
    write_checkpoint(beside, {"decoder.x": (1, 1)})
    assert vaes.resolve("Automatic", "sd15/dream.safetensors").path == beside
    assert vaes.resolve("Automatic", "other.safetensors").name == "sub/other.safetensors"
    assert vaes.resolve("None", "other.safetensors") is None
    assert vaes.resolve("kl-f8.safetensors", "demo").name == "kl-f8.safetensors"
    # The VAE beside a checkpoint is no checkpoint of the list.
    assert [f.name for f in checkpoints.scan("checkpoint")] == [
        "other.safetensors",
        "sd15/dream.safetensors",
    ]
    assert [name for name, _ in vaes.choices()] == [
        "Automatic", "None", "kl-f8.safetensors", "other.vae.pt.safetensors",
        "sub/other.safetensors",
    ]  # fmt: skip
    with pytest.raises(checkpoints.Unusable, match="No VAE named nope in the VAE folder"):
        vaes.resolve("nope", "demo")


@pytest.mark.any_database
def test_the_native_api_refuses_a_vae_it_has_not_or_the_openvino_backend_cannot_apply(
    tmp_path, settings
):
    settings.SD_VAE_DIR = tmp_path / "VAE"
    write_checkpoint(settings.SD_VAE_DIR / "kl-f8.safetensors", {"decoder.x": (1, 1)})
    client = Client()
    unknown = client.post("/api/generate", {"prompt": "x", "sd_vae": "../kl-f8.safetensors"})
    assert unknown.status_code == 400
    assert unknown.json()["errors"]["sd_vae"] == [
        "No usable VAE named ../kl-f8.safetensors: GET /sdapi/v1/sd-vae lists them."
    ]
    openvino = client.post(
        "/api/generate", {"prompt": "x", "sd_vae": "kl-f8.safetensors", "backend": "openvino"}
    )
    assert openvino.status_code == 400
    assert openvino.json()["errors"]["sd_vae"] == [
        "sd_vae kl-f8.safetensors needs the pytorch backend; the openvino backend cannot apply it."
    ]
    fine = client.post("/api/generate", {"prompt": "x", "sd_vae": "kl-f8.safetensors"})
    assert fine.status_code == 202, fine.content
    assert fine.json()["parameters"]["sd_vae"] == "kl-f8.safetensors"


@pytest.mark.any_database
def test_the_infotext_carries_a1111s_vae_lora_and_ti_fields_in_its_forms(make_session):
    from generator import __version__
    from generator.metadata import a1111_parameters

    session = make_session(prompt="a embred", steps=2, width=64, height=64, seed=1)
    text = a1111_parameters(
        session, model_hash="0123456789", vae=("abcdef0123", "kl-f8.safetensors"),
        lora_hashes="demo-swap: 0123456789ab", ti_hashes="embred: 0123456789ab, x: ba9876543210",
    )  # fmt: skip
    assert text.splitlines()[1] == (
        "Steps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model hash: 0123456789, "
        "Model: demo, VAE hash: abcdef0123, VAE: kl-f8.safetensors, Backend: pytorch, "
        'Lora hashes: "demo-swap: 0123456789ab", TI hashes: "embred: 0123456789ab, '
        f'x: ba9876543210", Version: sdsite {__version__}'
    )
    read = parse_a1111(text)
    assert (read["Lora hashes"], read["TI hashes"]) == (
        "demo-swap: 0123456789ab",
        "embred: 0123456789ab, x: ba9876543210",
    )
    # Without a VAE file (Automatic meaning the model's own), A1111 writes neither field.
    assert "VAE" not in a1111_parameters(session)
