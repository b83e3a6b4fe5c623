"""Upscalers: A1111's list and latent modes, model files found in A1111's folders and loaded
with spandrel (a random-weights ESRGAN built here), broken ones listed with their reason,
tiled upscaling and its progress, spandrel beside transformers and optimum-intel without
torchvision, and upscale jobs (A1111's Extras) through a real web server and worker."""

import base64
import io
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
import webuiapi
from django.test import Client
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.metadata import read_parameters
from generator.models import GenerationSession, Status
from generator.pipelines import upscalers
from tests.conftest import tell_logs_if_failed
from tests.tiny_models import esrgan

pytestmark = pytest.mark.django_db(transaction=True)

BUILT_IN = ["None", "Lanczos", "Nearest"]


class Nearest2x:
    """A stand-in for a spandrel model whose output pixel depends on one input pixel."""

    scale = 2
    supports_half = False

    def __call__(self, pixels):
        import torch.nn.functional as F

        return F.interpolate(pixels, scale_factor=2, mode="nearest")


LATENT = [
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
    "Latent (nearest)", "Latent (nearest-exact)",
]  # fmt: skip


@pytest.fixture(scope="session")
def webui(tmp_path_factory):
    """An A1111 folder: a 2x ESRGAN in models/ESRGAN, a 4x one in models/RealESRGAN, a
    truncated file and a safetensors file of no upscaler architecture in models/SwinIR."""
    root = tmp_path_factory.mktemp("webui")
    esrgan(root / "models/ESRGAN", "2x-Tiny", scale=2)
    four = esrgan(root / "models/RealESRGAN", "4x-Tiny", scale=4)
    swinir = root / "models/SwinIR"
    swinir.mkdir(parents=True)
    (swinir / "Broken.safetensors").write_bytes(four.read_bytes()[:2000])
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, swinir / "NotOne.safetensors")
    return root


@pytest.fixture
def folders(settings, webui):
    settings.SD_ESRGAN_DIR = webui / "models/ESRGAN"
    settings.SD_REALESRGAN_DIR = webui / "models/RealESRGAN"
    settings.SD_SWINIR_DIR = webui / "models/SwinIR"
    settings.SD_DAT_DIR = None
    settings.SD_UPSCALER_DIR = None
    settings.SD_API_AUTH = ""
    return webui


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def picture(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 40, 90))
    for x in range(0, width, 7):
        for y in range(height):
            image.putpixel((x, y), (10, 220, 30))
    return image


@pytest.mark.any_database
def test_the_upscaler_routes_answer_a1111s_shapes_with_each_file_by_stem_and_the_broken_ones_why(
    folders,
):
    client = Client()
    listed = client.get("/sdapi/v1/upscalers").json()
    assert [entry["name"] for entry in listed] == [
        *BUILT_IN, "2x-Tiny", "4x-Tiny", "Broken", "NotOne"
    ]  # fmt: skip
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["None"] == {
        "name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": None
    }  # fmt: skip
    assert by_name["2x-Tiny"] == {
        "name": "2x-Tiny", "model_name": "ESRGAN", "model_path": "2x-Tiny.safetensors",
        "model_url": None, "scale": 2,
    }  # fmt: skip
    assert by_name["4x-Tiny"]["model_name"] == "RealESRGAN"
    assert by_name["4x-Tiny"]["scale"] == 4
    assert (
        by_name["Broken"]["unusable"] == "truncated: its header needs 3880 bytes, the file has 2000"
    )
    assert "unusable" not in by_name["NotOne"]  # its header is fine: the load says why
    assert str(folders) not in str(listed)  # no server path
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert modes == [{"name": name} for name in LATENT]


@pytest.mark.any_database
def test_a_model_upscales_tile_by_tile_to_the_exact_size_and_reports_every_tile(folders, settings):
    settings.SD_UPSCALE_TILE = 16
    image = picture(40, 24)  # 3 x 2 tiles of 16
    seen = []
    out = upscalers.upscale(image, "2x-Tiny", (80, 48), on_tile=lambda *done: seen.append(done))
    assert out.size == (80, 48) and out.mode == "RGB"
    assert seen == [(step, 6) for step in range(1, 7)]

    # One tile covering the image is the model run on the whole image, exactly.
    import numpy as np
    import torch

    model = upscalers.model_for("2x-Tiny", "cpu")
    whole = upscalers.run_tiled(model, image, "cpu", tile=128)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    with torch.inference_mode():
        direct = model(pixels[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(whole), (direct * 255).round().astype(np.uint8))
    # Each tile's core lands where it belongs: a 2x nearest "model" tiled at 16 pixels
    # (cores of 16 with 8 of overlap, the edges shorter) is PIL's 2x nearest, exactly.
    tiled = upscalers.run_tiled(Nearest2x(), image, "cpu", tile=16)
    assert np.array_equal(np.asarray(tiled), np.asarray(image.resize((80, 48), Image.NEAREST)))

    # A 2x model twice for 4x: both passes' tiles on one count (6, then 5 x 3 tiles of 16).
    seen.clear()
    assert upscalers.upscale(image, "2x-Tiny", (160, 96), on_tile=lambda *d: seen.append(d)).size
    assert [done for done, _ in seen] == list(range(1, 6 + 15 + 1))
    assert {total for _, total in seen} == {21}
    # A 4x model once for 2x, then Lanczos down to the size asked.
    assert upscalers.upscale(image, "4x-Tiny", (80, 48)).size == (80, 48)


@pytest.mark.any_database
def test_what_cannot_upscale_says_why(folders):
    with pytest.raises(ValueError, match="Upscaler not found: 'Nope'; use one of None, Lanczos"):
        upscalers.upscale(picture(8, 8), "Nope", (16, 16))
    with pytest.raises(ValueError, match="The upscaler Broken cannot be used: truncated"):
        upscalers.upscale(picture(8, 8), "Broken", (16, 16))
    with pytest.raises(upscalers.NotAnUpscaler, match="NotOne is no upscaler model spandrel"):
        upscalers.upscale(picture(8, 8), "NotOne", (16, 16))
    assert upscalers.problem_of("Latent") == (
        "Latent upscales latents: only the hires fix can use it."
    )
    assert upscalers.problem_of("Latent (bicubic)", latent=True) is None


@pytest.mark.any_database
def test_spandrel_transformers_and_optimum_intel_work_together_in_one_process_without_torchvision(
    folders,
):
    """CI-visible: the pinned stack imports and runs together. spandrel is imported with the
    torchvision stand-in, which is gone again: transformers still sees no torchvision."""
    code = textwrap.dedent("""
        import importlib.util, sys
        import django; django.setup()
        from generator.pipelines import upscalers
        from PIL import Image
        out = upscalers.upscale(Image.new("RGB", (24, 16)), "2x-Tiny", (48, 32))
        assert out.size == (48, 32)
        assert "spandrel" in sys.modules
        assert "torchvision" not in sys.modules
        assert importlib.util.find_spec("torchvision") is None
        import transformers.utils
        assert transformers.utils.is_torchvision_available() is False
        from transformers import CLIPTextConfig, CLIPTextModel
        CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=10))
        from optimum.intel import OVStableDiffusionPipeline
        # The stand-in's functions, kept by LaMa's module, say what is missing.
        from spandrel.architectures.LaMa.__arch import LaMa
        try:
            LaMa.rotate(None, 0)
        except RuntimeError as exc:
            assert "needs torchvision" in str(exc), exc
        else:
            raise AssertionError("the stand-in ran")
        print("together", OVStableDiffusionPipeline.__name__)
    """)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SD_ESRGAN_DIR": str(folders / "models/ESRGAN"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("together OVStableDiffusionPipeline")


@pytest.mark.any_database
def test_extras_refuse_an_unknown_or_broken_upscaler_and_a_size_past_sd_max_pixels(folders):
    client = Client()

    def extras(**body):
        body.setdefault("image", png_b64(picture(32, 32)))
        return client.post("/sdapi/v1/extra-single-image", body, content_type="application/json")

    unknown = extras(upscaler_1="4x-UltraSharp")
    assert unknown.status_code == 422
    [problem] = unknown.json()["detail"]
    assert problem["loc"] == ["body", "upscaler_1"]
    assert problem["msg"].startswith("Upscaler not found: '4x-UltraSharp'; use one of None")
    broken = extras(upscaler_1="Lanczos", upscaler_2="Broken", extras_upscaler_2_visibility=0.5)
    assert broken.json()["detail"][0]["loc"] == ["body", "upscaler_2"]
    assert "truncated" in broken.json()["detail"][0]["msg"]
    too_big = extras(upscaler_1="Lanczos", upscaling_resize=8, image=png_b64(picture(200, 200)))
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["loc"] == ["body", "upscaling_resize"]
    assert "SD_MAX_PIXELS" in too_big.json()["detail"][0]["msg"]
    assert extras(image="").status_code == 422
    assert extras(resize_mode=3).json()["detail"][0]["loc"] == ["body", "resize_mode"]

    native = client.post(
        "/api/generate",
        {"job": "upscale", "upscaler_1": "Nope", "init_image": upload(picture(16, 16))},
    )
    assert native.status_code == 400
    assert native.json()["errors"]["upscaler_1"][0].startswith("Upscaler not found: 'Nope'")
    no_image = client.post("/api/generate", {"job": "upscale", "upscaler_1": "Lanczos"})
    assert no_image.json()["errors"]["init_image"] == [
        "An upscale job needs an image (init_image)."
    ]
    assert not GenerationSession.objects.exists()


def upload(image: Image.Image):
    from django.core.files.uploadedfile import SimpleUploadedFile

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return SimpleUploadedFile("in.png", buffer.getvalue(), content_type="image/png")


@pytest.mark.timeout(600)
def test_extras_upscale_jobs_run_on_a_real_worker_with_owner_progress_history_and_metadata(
    request, folders, tmp_path
):
    from tests.support.processes import WebServer, WorkerProcess

    env = {"SD_WEBUI_DIR": folders, "SD_UPSCALE_TILE": 32, "SD_STEP_WRITE_INTERVAL": 0}
    web = WebServer(tmp_path, **env)
    worker = WorkerProcess(tmp_path, **env)
    request.addfinalizer(lambda: tell_logs_if_failed(request, [web, worker]))
    try:
        user = user_for("tool")
        _, key = issue_key(user, "tests")
        port = int(web.url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=key)
        result = api.extra_single_image(
            image=picture(40, 24), upscaler_1="2x-Tiny", upscaling_resize=2
        )
        assert result.image.size == (80, 48)
        assert "Postprocess upscaler: 2x-Tiny" in result.info  # webuiapi's: the html_info
        [single] = GenerationSession.objects.all()
        assert (single.status, single.mode, single.owner_id) == (
            Status.COMPLETED, "upscale", user.pk
        )  # fmt: skip
        assert (single.current_step, single.total_steps) == (2, 2)  # 2 x 1 tiles of 32
        with single.image.open("rb") as file:
            png = Image.open(io.BytesIO(file.read()))
        source, values = read_parameters(png)
        assert source == "sdsite"
        assert values["job"] == "upscale" and values["upscaler_1"] == "2x-Tiny"
        assert "steps" not in values and "Steps:" not in png.info["parameters"]
        assert "Postprocess upscale by: 2.0" in png.info["parameters"]

        # A batch: one job per image, a second upscaler blended over the first, to a size.
        batch = httpx.post(
            f"{web.url}/sdapi/v1/extra-batch-images",
            json={
                "imageList": [
                    {"data": png_b64(picture(16, 16)), "name": "a.png"},
                    {"data": png_b64(picture(24, 8)), "name": "b.png"},
                ],
                "resize_mode": 1, "upscaling_resize_w": 48, "upscaling_resize_h": 0,
                "upscaler_1": "Lanczos", "upscaler_2": "4x-Tiny",
                "extras_upscaler_2_visibility": 0.5,
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )  # fmt: skip
        assert batch.status_code == 200, batch.text
        sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in batch.json()["images"]]
        assert sizes == [(48, 48), (48, 16)]
        assert GenerationSession.objects.filter(status=Status.COMPLETED).count() == 3

        # A file spandrel does not recognise: the job fails saying so, without a path.
        failed = httpx.post(
            f"{web.url}/sdapi/v1/extra-single-image",
            json={"image": png_b64(picture(16, 16)), "upscaler_1": "NotOne"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert failed.status_code == 500
        assert (
            "The upscaler NotOne is no upscaler model spandrel recognises"
            in (failed.json()["detail"])
        )
        assert str(folders) not in failed.text
    finally:
        worker.stop()
        web.stop()


@pytest.mark.any_database
def test_the_page_has_a_hires_fix_section_and_an_upscale_action_with_the_usable_upscalers(
    folders,
):
    page = Client().get("/").content.decode()
    assert '<details id="hires-fix">' in page
    assert 'name="enable_hr"' in page and 'type="checkbox"' in page
    assert 'name="hr_upscaler"' in page and '<option value="Latent (bicubic)"' in page
    upscale = page[page.index('<select id="upscale-with">') :].split("</select>")[0]
    assert '<option value="2x-Tiny">' in upscale and '<option value="Lanczos">' in upscale
    assert "Broken" not in upscale and '"None"' not in upscale and "Latent" not in upscale
    assert 'id="upscale-button"' in page
    assert 'name="upscaler_1"' not in page  # an upscale job's fields: set by the action


@pytest.mark.any_database
def test_an_upscale_to_a_size_of_another_shape_covers_it_and_keeps_the_middle_as_a1111_crops():
    from generator.pipelines.base import GenerationRequest, upscale_job

    image = picture(40, 24)
    steps = []
    request = GenerationRequest(
        "x", "", 1, 7.5, 64, 64, 0, job="upscale", init_image=image, upscaler_1="Lanczos",
        upscaling_resize_w=48, upscaling_resize_h=48,
    )  # fmt: skip
    out = upscale_job(request, "cpu", lambda *step: steps.append(step) or True)
    covered = image.resize((80, 48), Image.Resampling.LANCZOS)  # 48 high covers 48 x 48
    assert out.tobytes() == covered.crop((16, 0, 64, 48)).tobytes()
    assert steps == [(1, 1, None)]  # no model, no tiles: one step
    assert upscalers.cover_size((64, 64), (96, 80), multiple=8) == (96, 96)
    assert upscalers.cover_size((512, 320), (1024, 640), multiple=8) == (1024, 640)
