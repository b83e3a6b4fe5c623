"""A job for a single-file checkpoint in the models folder runs on a real worker: the same
picture as the diffusers folder it was made from, A1111's `Model` and `Model hash` in its
infotext, and an embedding named in the prompt used as the word it stands for."""

import base64
import hashlib
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from generator.pipelines import demo
from tests.support.processes import WebServer, WorkerProcess
from tests.support.single_file_models import ldm_state_dict

pytestmark = pytest.mark.django_db(transaction=True)


def pixels(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    data = base64.b64decode(answer.json()["images"][0])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.any_database
def test_a_single_file_checkpoint_makes_its_folders_picture_and_uses_the_prompts_embeddings(
    tmp_path,
):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo.WEIGHTS)
    webui = tmp_path / "webui"
    folder = webui / "models" / "Stable-diffusion" / "mine"
    folder.mkdir(parents=True)
    checkpoint = folder / "demo-sd1.safetensors"
    save_file(ldm_state_dict(pipe), checkpoint)
    shutil.copytree(
        demo.WEIGHTS, folder / "demo-sd1.safetensors.config",
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
    )  # fmt: skip
    [red] = pipe.tokenizer("red", add_special_tokens=False).input_ids
    vector = pipe.text_encoder.get_input_embeddings().weight[red].detach().clone()
    (webui / "embeddings").mkdir()
    save_file({"emb_params": vector[None]}, webui / "embeddings" / "embred.safetensors")
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    title = f"mine/demo-sd1.safetensors [{sha[:10]}]"

    web = WebServer(tmp_path, SD_WEBUI_DIR=webui, SD_API_AUTH="off")
    worker = WorkerProcess(tmp_path, SD_WEBUI_DIR=webui)
    try:
        with httpx.Client(base_url=web.url + "/sdapi/v1", timeout=600) as client:
            asked = {"steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 7}

            def txt2img(prompt, model):
                return client.post(
                    "/txt2img",
                    json={**asked, "prompt": prompt,
                          "override_settings": {"sd_model_checkpoint": model}},
                )  # fmt: skip

            folder_picture = pixels(txt2img("a red", "demo"))
            answer = txt2img("a red", title)
            assert np.array_equal(pixels(answer), folder_picture)
            png = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
            infotext = png.info["parameters"]
            assert "Model: mine_demo-sd1," in infotext
            assert f"Model hash: {sha[:10]}," in infotext
            assert str(tmp_path) not in answer.text
            with_embedding = txt2img("a embred", "mine/demo-sd1.safetensors")
            assert np.array_equal(pixels(with_embedding), folder_picture)
            assert not np.array_equal(pixels(txt2img("a", "mine_demo-sd1")), folder_picture)
    finally:
        worker.stop()
        web.stop()
