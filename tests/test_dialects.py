"""The A1111 and OpenAI APIs, driven by their real clients (webuiapi, openai) against a real
web server and worker, and by request bodies replayed as Open WebUI, SillyTavern and chaiNNer
send them."""

import base64
import io
import threading

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.models import GenerationSession, Status
from tests.support.processes import WebServer, server_and_worker, wait_for

# The dialects queue, wait on, cancel and list jobs through the database: CI runs them on
# both engines.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    """One web server and one worker for the module: the tests' rows come and go under them."""
    with server_and_worker(tmp_path_factory.mktemp("dialects"), django_db_blocker) as web:
        yield web


@pytest.fixture
def api_key(server):
    _, key = issue_key(user_for("tool"), "tests")
    return key


@pytest.fixture
def web_server(server):
    return server


@pytest.fixture
def start_worker():
    return lambda *args, **env: None  # the module's worker serves every test


@pytest.fixture
def a1111(server, api_key):
    port = int(server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=api_key)


def random_image(size=(64, 64), seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_webuiapi_txt2img_batches_with_consecutive_seeds_for_the_key_s_user(a1111):
    result = a1111.txt2img(
        prompt="a fox", steps=3, width=64, height=64, seed=5, batch_size=2, cfg_scale=7,
        sampler_name="DPM++ 2M", scheduler="Karras", restore_faces=True,
    )  # fmt: skip

    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [5, 6]
    # As A1111 1.9 answers: the sampler and its schedule type apart.
    assert (result.info["sampler_name"], result.info["scheduler"]) == ("DPM++ 2M", "Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in result.info["infotexts"][0]
    assert result.info["ignored"] == ["restore_faces"]
    assert "Steps: 3" in result.info["infotexts"][0]
    sessions = GenerationSession.objects.filter(owner__username="tool")
    assert sorted(sessions.values_list("seed", flat=True)) == [5, 6]


def test_webuiapi_img2img_and_inpainting(a1111):
    start = random_image()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    size = {"width": 64, "height": 64}  # webuiapi sends 512x512 unless told
    img2img = a1111.img2img(images=[start], prompt="x", steps=4, denoising_strength=0.5, **size)
    inpainted = a1111.img2img(
        images=[start], mask_image=mask, prompt="x", steps=4, denoising_strength=1,
        inpainting_fill=1, mask_blur=0, **size,
    )  # fmt: skip

    assert img2img.images[0].size == (64, 64)
    after = np.asarray(inpainted.images[0].convert("RGB"))
    assert (after[:8] == np.asarray(start)[:8]).all()  # outside the mask: the original
    modes = set(GenerationSession.objects.values_list("total_steps", flat=True))
    assert modes == {2, 4}  # 0.5 of 4 steps, then all 4


def test_webuiapi_progress_then_interrupt_returns_promptly(a1111):
    results = []
    call = threading.Thread(
        target=lambda: results.append(
            a1111.txt2img(prompt="long", steps=150, width=128, height=128)
        )
    )
    call.start()
    progress = wait_for(
        lambda: (p := a1111.get_progress())["state"]["sampling_step"] >= 2 and p,
        timeout=120,
        message="the job to be running",
    )
    assert progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1
    assert progress["current_image"]  # the live preview, base64

    a1111.interrupt()
    call.join(timeout=60)
    assert not call.is_alive()
    assert results[0].images == []  # nothing finished
    assert GenerationSession.objects.get().status == Status.CANCELLED


def test_webuiapi_models_options_samplers_and_png_info(a1111, api_key):
    assert [m["title"] for m in a1111.get_sd_models()] == ["demo"]
    assert "Euler a" in a1111.util_get_sampler_names()
    assert a1111.get_options()["sd_model_checkpoint"] == "demo"
    a1111.set_options({"sd_model_checkpoint": "demo", "samples_save": False})
    # No upscaler models and no VAE files here: A1111's built-in upscalers only.
    assert [upscaler["name"] for upscaler in a1111.get_upscalers()] == [
        "None",
        "Lanczos",
        "Nearest",
    ]
    assert a1111.get_sd_vae() == []

    made = a1111.txt2img(prompt="a lighthouse", steps=2, width=64, height=64, seed=9)
    info = a1111.png_info(made.images[0])
    assert "Seed: 9" in info.info
    assert info.parameters["prompt"] == "a lighthouse"


def test_without_a_key_the_dialects_answer_401_with_a_json_error(web_server):
    for method, path in [("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/txt2img"),
                         ("GET", "/v1/models"), ("POST", "/v1/images/generations")]:  # fmt: skip
        response = httpx.request(
            method, f"{web_server.url}{path}", json={}, headers={"Authorization": "Bearer nope"}
        )
        assert response.status_code == 401, path
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert response.json()
    assert not GenerationSession.objects.exists()


def test_sd_api_auth_off_opens_them_for_a_trusted_box(tmp_path):
    server = WebServer(tmp_path, SD_API_AUTH="off")
    try:
        assert httpx.get(f"{server.url}/sdapi/v1/sd-models").status_code == 200
    finally:
        server.stop()


# Bodies as these tools send them (from their sources): keys sdsite does not know are ignored.
OPEN_WEBUI = {"prompt": "a fox", "batch_size": 1, "width": 64, "height": 64, "steps": 2}
SILLYTAVERN = {
    "url": "http://127.0.0.1:7860", "auth": "user:pass", "prompt": "a fox",
    "negative_prompt": "blurry", "sampler_name": "Euler a", "scheduler": "Automatic", "steps": 2,
    "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False, "enable_hr": False,
    "hr_upscaler": "Latent", "hr_scale": 2, "denoising_strength": 0.7, "hr_second_pass_steps": 0,
    "seed": -1, "override_settings": {"CLIP_stop_at_last_layers": 1},
    "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": True,
    "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
}  # fmt: skip
CHAINNER = {
    "prompt": "a fox", "negative_prompt": "", "seed": 3, "steps": 2, "sampler_name": "Euler",
    "cfg_scale": 7.0, "width": 64, "height": 64, "tiling": False,
}  # fmt: skip


@pytest.mark.parametrize("body", [OPEN_WEBUI, SILLYTAVERN, CHAINNER])
def test_request_bodies_of_open_webui_sillytavern_and_chainner(
    web_server, start_worker, api_key, body
):
    start_worker()
    basic = base64.b64encode(f"tool:{api_key}".encode()).decode()
    response = httpx.post(
        f"{web_server.url}/sdapi/v1/txt2img", json=body,
        headers={"Authorization": f"Basic {basic}"}, timeout=180,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)


def test_openai_images_generate_and_models_list(web_server, start_worker, api_key):
    start_worker()
    client = openai.OpenAI(base_url=f"{web_server.url}/v1", api_key=api_key)

    assert [model.id for model in client.models.list()][0] == "demo"
    result = client.images.generate(
        model="demo", prompt="a fox", n=2, size="64x64", response_format="b64_json",
        quality="hd", style="vivid", user="someone",
    )  # fmt: skip
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert result.data[0].revised_prompt == "a fox"

    by_url = client.images.generate(prompt="a fox", size="64x64", response_format="url")
    fetched = httpx.get(by_url.data[0].url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"

    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a fox", size="65x65")
    assert refused.value.body["param"] == "size"
    # sdsite's webhook rides in extra_body, checked like POST /api/generate's.
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a fox", extra_body={"callback_url": "http://10.0.0.1/"})
    assert refused.value.body["param"] == "callback_url"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{web_server.url}/v1", api_key="wrong").models.list()
