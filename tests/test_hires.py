"""The hires fix: A1111's parameters in the spec, two passes on the demo model through a real
worker (exactly the second pass's steps, whatever the strength), one progress bar over both
that never goes back, A1111's progress shape, the metadata both ways, and its 4xx."""

import io

import httpx
import pytest
import webuiapi
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.forms import GenerateForm
from generator.metadata import a1111_parameters, from_a1111_text, read_parameters
from generator.models import GenerationSession, Status
from generator.pipelines.upscalers import hires_size, second_pass_schedule
from tests.conftest import tell_logs_if_failed
from tests.sse_client import iter_events
from tests.support.processes import WebServer, WorkerProcess
from tests.tiny_models import esrgan

pytestmark = pytest.mark.django_db(transaction=True)

HIRES = {"prompt": "a red circle", "steps": 6, "seed": 3, "width": 64, "height": 64}
HIRES |= {"enable_hr": True, "hr_second_pass_steps": 4}


@given(st.integers(1, 150), st.floats(0.01, 1.0))
def test_the_second_pass_schedule_runs_exactly_the_hires_steps_as_diffusers_counts_them(
    steps, strength
):
    scheduled = second_pass_schedule(steps, strength)
    # diffusers' image-to-image (get_timesteps) runs min(int(n * strength), n) of n.
    assert min(int(scheduled * strength), scheduled) == steps
    assert scheduled == steps or min(int((scheduled - 1) * strength), scheduled - 1) < steps


def test_the_hires_size_is_a1111s_in_multiples_of_8():
    assert hires_size(64, 64, 2.0, 0, 0) == (128, 128)
    assert hires_size(512, 768, 1.5, 0, 0) == (768, 1152)
    assert hires_size(512, 512, 1.3, 0, 0) == (664, 664)  # 665.6 down to a multiple of 8
    assert hires_size(512, 320, 2.0, 1024, 0) == (1024, 640)  # the height in proportion
    assert hires_size(512, 320, 2.0, 0, 160) == (256, 160)
    assert hires_size(64, 64, 2.0, 320, 192) == (320, 192)


@pytest.mark.timeout(900)  # two hires jobs: about 100 s on a quiet 2-core CPU, more when shared
def test_a_hires_job_on_the_demo_runs_6_then_4_steps_on_one_bar_and_the_png_says_so(
    request, tmp_path
):
    """Through a real web server and worker: the stream's progress goes 0 to 10 and never
    back, with the whole total from its first message; the worker timed exactly 10 steps."""
    webui = tmp_path / "webui"
    esrgan(webui / "models/ESRGAN", "2x-Tiny")
    env = {"SD_WEBUI_DIR": webui, "SD_STEP_WRITE_INTERVAL": 0, "SD_API_AUTH": "off"}
    web = WebServer(tmp_path, **env)
    worker = WorkerProcess(tmp_path, **env)
    request.addfinalizer(lambda: tell_logs_if_failed(request, [web, worker]))
    client = httpx.Client(base_url=web.url, timeout=300)
    try:
        token = client.get("/").cookies["csrftoken"]
        answer = client.post(
            "/api/generate", json=HIRES, headers={"X-CSRFToken": token, "Referer": web.url + "/"}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["total_steps"] == 10
        pk = answer.json()["session_id"]
        progress, phases = [], []
        with client.stream("GET", f"/api/progress/{pk}") as stream:
            for event in iter_events(stream.iter_lines()):
                if not event.data:
                    continue
                if event.data["type"] == "progress":
                    progress.append((event.data["current_step"], event.data["total_steps"]))
                elif event.data["type"] == "phase":
                    phases.append(event.data["phase"])
                elif event.data["type"] in ("complete", "error", "failed", "cancelled"):
                    assert event.data["type"] == "complete", event.data
                    break
        steps = [step for step, _ in progress]
        assert steps == sorted(steps) and steps[-1] == 10, progress
        assert {total for _, total in progress} == {10}
        assert "upscaling" in phases, phases
        session = GenerationSession.objects.get(pk=pk)
        assert session.status == Status.COMPLETED, session.error
        # Every step is timed by the worker's reporter: 6 + 4, no more (a strength of 0.7
        # with 4 steps would run int(4 * 0.7) = 2 steps in diffusers' own count).
        assert len(session.step_seconds) == 10
        with session.image.open("rb") as file:
            png = Image.open(io.BytesIO(file.read()))
            png.load()
        assert png.size == (128, 128)
        text = png.info["parameters"]
        assert "Size: 64x64" in text
        assert (
            "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent"
        ) in text
        assert "Hires sampler" not in text and "Hires prompt" not in text
        assert from_a1111_text(text).items() >= {
            "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 4,
            "hr_upscaler": "Latent", "strength": 0.7,
        }.items()  # fmt: skip
        assert read_parameters(png)[1]["enable_hr"] is True

        # A1111's API (webuiapi): an upscaler model, a size, a strength, a sampler of its own.
        user = user_for("tool")
        _, key = issue_key(user, "tests")
        port = int(web.url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=key)
        result = api.txt2img(
            prompt="a red circle", steps=2, width=64, height=64, seed=1, enable_hr=True,
            hr_upscaler="2x-Tiny", hr_resize_x=96, hr_resize_y=80, denoising_strength=0.5,
            hr_second_pass_steps=3, hr_sampler_name="DPM++ 2M", hr_prompt="a blue circle",
        )  # fmt: skip
        assert result.image.size == (96, 80)
        assert "enable_hr" not in result.info["ignored"]
        assert result.info["enable_hr"] is True and result.info["hr_upscaler"] == "2x-Tiny"
        infotext = result.info["infotexts"][0]
        assert (
            "Denoising strength: 0.5, Hires resize: 96x80, Hires steps: 3, Hires upscaler: "
            "2x-Tiny, Hires sampler: DPM++ 2M, Hires prompt: a blue circle"
        ) in infotext
        assert "Hires upscale:" not in infotext
        second = GenerationSession.objects.exclude(pk=pk).get()
        assert len(second.step_seconds) == 2 + 3 and second.total_steps == 5
    finally:
        client.close()
        worker.stop()
        web.stop()


@pytest.mark.any_database
def test_a1111_progress_counts_a_hires_job_as_two_jobs_with_each_passs_steps(
    settings, make_session
):
    settings.SD_API_AUTH = ""
    session = make_session(**HIRES)
    assert session.total_steps == 10
    client = Client()
    seen = []
    for step, phase, job_no, sampling_step, sampling_steps in (
        (3, "denoising", 0, 3, 6),
        (6, "denoising", 0, 6, 6),
        (6, "upscaling", 1, 0, 4),
        (8, "denoising", 1, 2, 4),
        (10, "decoding", 1, 4, 4),
    ):
        GenerationSession.objects.filter(pk=session.pk).update(
            status=Status.RUNNING, current_step=step, phase=phase
        )
        answer = client.get("/sdapi/v1/progress").json()
        state = answer["state"]
        assert state["job_count"] == 2
        assert (state["job_no"], state["sampling_step"], state["sampling_steps"]) == (
            job_no, sampling_step, sampling_steps
        )  # fmt: skip
        seen.append(answer["progress"])
    assert seen == [0.3, 0.6, 0.6, 0.8, 1.0]


@pytest.mark.any_database
def test_the_metadata_says_hires_as_a1111_writes_it_and_reads_it_back(make_session):
    session = make_session(
        **HIRES | {"hr_resize_x": 320, "hr_resize_y": 192, "hr_upscaler": "Lanczos",
                   "hr_sampler_name": "DPM++ 2M", "hr_prompt": "a sharp, red circle",
                   "strength": 0.45}
    )  # fmt: skip
    text = a1111_parameters(session)
    assert (
        text.splitlines()[-1]
        .split(", Version")[0]
        .endswith(
            "Denoising strength: 0.45, Hires resize: 320x192, Hires steps: 4, "
            'Hires upscaler: Lanczos, Hires sampler: DPM++ 2M, Hires prompt: "a sharp, red circle"'
        )
    )
    back = from_a1111_text(text)
    assert {k: back[k] for k in ("enable_hr", "hr_resize_x", "hr_resize_y", "hr_upscaler")} == {
        "enable_hr": True, "hr_resize_x": 320, "hr_resize_y": 192, "hr_upscaler": "Lanczos"
    }  # fmt: skip
    assert (back["hr_sampler_name"], back["hr_prompt"], back["strength"]) == (
        "DPM++ 2M", "a sharp, red circle", 0.45
    )  # fmt: skip
    # Off: nothing of it is stored or written, and no denoising strength without an image.
    plain = make_session(prompt="x", steps=2, hr_upscaler="Lanczos")
    assert "hr_upscaler" not in plain.parameter_values()
    assert "Hires" not in a1111_parameters(plain)
    assert "Denoising strength" not in a1111_parameters(plain)
    assert "enable_hr" not in from_a1111_text(a1111_parameters(plain))


@pytest.mark.any_database
def test_an_unknown_upscaler_or_a_final_size_past_sd_max_pixels_is_a_4xx_naming_it(settings):
    client = Client()
    unknown = client.post("/api/generate", HIRES | {"hr_upscaler": "4x-UltraSharp"})
    assert unknown.status_code == 400
    [message] = unknown.json()["errors"]["hr_upscaler"]
    assert message.startswith("Upscaler not found: '4x-UltraSharp'; use one of None, Lanczos")

    _, key = issue_key(user_for("tool"), "tests")
    a1111 = client.post(
        "/sdapi/v1/txt2img",
        {"prompt": "x", "enable_hr": True, "hr_upscaler": "4x-UltraSharp"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert a1111.status_code == 422
    [problem] = a1111.json()["detail"]
    assert problem["loc"] == ["body", "hr_upscaler"]
    assert problem["msg"] == message
    wrong_type = client.post(
        "/sdapi/v1/txt2img",
        {"prompt": "x", "enable_hr": "yes"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert wrong_type.json()["detail"][0]["loc"] == ["body", "enable_hr"]

    settings.SD_MAX_PIXELS = 512 * 512
    too_big = client.post("/api/generate", HIRES | {"width": 256, "height": 256, "hr_scale": 4})
    assert too_big.status_code == 400
    assert too_big.json()["errors"]["hr_scale"] == [
        "The hires size 1024x1024 is 1,048,576 pixels; this server allows at most 262,144 "
        "(SD_MAX_PIXELS), e.g. 1024x1024."
    ]
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_the_hires_fix_is_for_text_to_image_on_pytorch_and_takes_a1111s_strength_unless_given():
    openvino = Client().post("/api/generate", HIRES | {"backend": "openvino"})
    assert openvino.json()["errors"]["enable_hr"] == [
        "enable_hr True needs the pytorch backend; the openvino backend cannot apply it."
    ]
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = "in.png"
    with_image = Client().post("/api/generate", HIRES | {"init_image": buffer})
    assert with_image.json()["errors"]["enable_hr"] == [
        "The hires fix is for text to image: send no init_image."
    ]

    form = GenerateForm(HIRES)
    assert form.is_valid(), form.errors
    assert form.parameters()["strength"] == 0.7
    given = GenerateForm(HIRES | {"strength": 0.3})
    assert given.is_valid() and given.parameters()["strength"] == 0.3
    off = GenerateForm({"prompt": "x", "hr_scale": 3})
    assert off.is_valid() and "hr_scale" not in off.parameters()
    assert "strength" not in off.parameters()
    # The page's form has its Hires fix section, from the spec's group.
    names = [field.name for field in GenerateForm().group["hires"]]
    assert names[:2] == ["enable_hr", "hr_scale"] and "hr_upscaler" in names
