"""ControlNet through every door: the extension's routes (versions, lists, detect), its units in
A1111's requests (refused with a 422 naming the field, nothing queued), the infotext both ways,
and a real worker drawing with the demo's canny ControlNet through webuiapi's client."""

import base64
import io

import cv2
import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage
from django.test import Client
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from generator.apikeys import issue_key, user_for
from generator.metadata import a1111_parameters, from_a1111_text
from generator.models import GenerationSession
from generator.pipelines import controlnet, preprocessors

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(db):
    return issue_key(user_for("tool"), "tests")[1]


@pytest.fixture
def controlnet_dir(tmp_path, settings):
    """SD_CONTROLNET_DIR with an SD 1.x ControlNet (its header is what the lists read)."""
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    settings.SD_CONTROLNET_DIR = folder
    tensors = {
        "control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(
            (320, 768), dtype=torch.float16
        ),
        "control_model.input_hint_block.0.weight": torch.zeros((16, 3, 3, 3)),
    }
    save_file(tensors, folder / "control_v11p_sd15_canny.safetensors")
    return folder


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def square_at(box, size=128, fill="white", ground="black") -> Image.Image:
    image = Image.new("RGB", (size, size), ground)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    return image


def get(path: str, key: str):
    return Client().get(path, headers={"Authorization": f"Bearer {key}"})


def post(path: str, body: dict, key: str):
    return Client().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )


@pytest.mark.any_database
def test_version_and_module_list_answer_as_the_extension_with_only_usable_preprocessors(key):
    assert get("/controlnet/version", key).json() == {"version": 2}
    modules = get("/controlnet/module_list", key).json()
    assert modules["module_list"] == ["none", "canny", "invert", "threshold", "scribble"]
    assert modules["module_detail"]["canny"] == {
        "model_free": True,
        "sliders": [
            {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048},
            {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255},
            {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255},
        ],
    }
    assert modules["module_detail"]["none"]["sliders"] == []
    # Behind the API key, as /sdapi/v1 is.
    assert Client().get("/controlnet/module_list").status_code == 401


@pytest.mark.any_database
def test_model_list_names_demo_canny_and_the_folders_controlnets_with_their_family(
    key, controlnet_dir
):
    (controlnet_dir / "broken.safetensors").write_bytes(b"\x00" * 4)
    answer = get("/controlnet/model_list?details=true", key).json()
    assert answer["model_list"][0] == "demo-canny"
    assert "control_v11p_sd15_canny" in answer["model_list"]
    assert not any("broken" in name for name in answer["model_list"])  # unusable: not offered
    assert answer["model_details"]["demo-canny"] == {"family": "demo"}
    assert answer["model_details"]["control_v11p_sd15_canny"] == {"family": "sd1"}
    assert str(controlnet_dir) not in str(answer)


@pytest.mark.any_database
def test_detect_returns_the_canny_edges_opencv_finds_at_the_processor_resolution(key):
    image = square_at((30, 40, 90, 100), fill=(220, 40, 40), ground=(40, 80, 220))
    answer = post(
        "/controlnet/detect",
        {"controlnet_module": "canny", "controlnet_input_images": [b64(image)],
         "controlnet_processor_res": 128, "controlnet_threshold_a": 100,
         "controlnet_threshold_b": 200},
        key,
    )  # fmt: skip
    assert answer.status_code == 200, answer.content
    assert answer.json()["info"] == "Success"
    [result] = answer.json()["images"]
    edges = np.asarray(decoded(result).convert("L"))
    assert np.array_equal(edges, cv2.Canny(np.asarray(image), 100, 200))
    assert edges[40, 30] == 255 and edges[70, 60] == 0  # the outline, not the inside

    # At 64 px (the short side), and inverted / thresholded as the other modules do.
    half = post(
        "/controlnet/detect",
        {"controlnet_module": "invert", "controlnet_images": [b64(image)],
         "controlnet_processor_res": 64},
        key,
    )  # fmt: skip
    inverted = np.asarray(decoded(half.json()["images"][0]))
    assert inverted.shape == (64, 64, 3)
    assert tuple(inverted[2, 2]) == (255 - 40, 255 - 80, 255 - 220)


@pytest.mark.any_database
def test_detect_refuses_an_unknown_module_a_non_image_and_too_many_pixels_naming_the_field(
    key, settings
):
    image = b64(square_at((0, 0, 10, 10)))
    unknown = post(
        "/controlnet/detect",
        {"controlnet_module": "depth_midas", "controlnet_input_images": [image]},
        key,
    )
    assert unknown.status_code == 422
    [problem] = unknown.json()["detail"]
    assert problem["loc"] == ["body", "controlnet_module"]
    assert "depth_midas" in problem["msg"] and "canny" in problem["msg"]

    not_image = post(
        "/controlnet/detect",
        {"controlnet_module": "canny", "controlnet_input_images": [b64_text("not a png")]},
        key,
    )
    assert not_image.status_code == 422
    assert not_image.json()["detail"][0]["loc"] == ["body", "controlnet_input_images"]
    assert "Not an image" in not_image.json()["detail"][0]["msg"]

    settings.SD_MAX_UPLOAD_PIXELS = 100 * 100
    too_big = post(
        "/controlnet/detect",
        {"controlnet_module": "canny", "controlnet_input_images": [image]},
        key,
    )
    assert too_big.status_code == 422
    assert "more than" in too_big.json()["detail"][0]["msg"]


def b64_text(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def txt2img(key: str, unit: dict, **body):
    return post(
        "/sdapi/v1/txt2img",
        {"prompt": "a red square", "steps": 2, "width": 64, "height": 64,
         "alwayson_scripts": {"controlnet": {"args": [unit]}}, **body},
        key,
    )  # fmt: skip


@pytest.mark.any_database
@pytest.mark.parametrize(
    "unit, message",
    [
        ({"model": "no-such-model", "module": "canny"}, "no ControlNet 'no-such-model' here"),
        ({"model": "demo-canny", "module": "depth_midas"}, "no preprocessor 'depth_midas'"),
        ({"model": "control_v11p_sd15_canny [abc]", "module": "canny"}, "is for SD 1.x"),
        ({"model": "demo-canny", "weight": 3}, "Ensure this value is less than or equal to 2"),
    ],
)
def test_an_a1111_unit_the_server_cannot_run_is_a_422_naming_it_and_nothing_is_queued(
    key, controlnet_dir, unit, message
):
    answer = txt2img(key, {"image": b64(square_at((5, 5, 30, 30))), **unit})
    assert answer.status_code == 422, answer.content
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "alwayson_scripts.controlnet.args"]
    assert message in problem["msg"]
    assert problem["msg"].startswith("controlnet[0].")
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_an_a1111_unit_whose_image_is_no_image_or_missing_is_a_422_naming_the_image(key):
    broken = txt2img(key, {"image": b64_text("<svg/>"), "model": "demo-canny"})
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["msg"].startswith("controlnet[0].image: Not an image")
    missing = txt2img(key, {"model": "demo-canny", "module": "canny"})
    assert missing.json()["detail"][0]["loc"] == [
        "body", "alwayson_scripts.controlnet.args[0].image"
    ]  # fmt: skip
    mode = txt2img(key, {"image": b64(square_at((1, 1, 9, 9))), "model": "demo-canny",
                         "control_mode": 7})  # fmt: skip
    assert mode.json()["detail"][0]["loc"] == [
        "body", "alwayson_scripts.controlnet.args[0].control_mode"
    ]  # fmt: skip
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_controlnet_on_the_openvino_backend_is_refused_before_queueing():
    unit = {"image": b64(square_at((5, 5, 30, 30))), "model": "demo-canny", "module": "canny"}
    answer = Client().post(
        "/api/generate",
        {"prompt": "a red square", "backend": "openvino", "controlnet": [unit]},
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert answer.json()["errors"]["controlnet"] == [
        "ControlNet runs on the PyTorch backend; the openvino backend has none."
    ]
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_the_infotext_writes_each_unit_as_the_extension_does_and_reads_it_back(make_session):
    units = [
        {"image": "inputs/x.png", "module": "canny", "model": "demo-canny", "weight": 1.0,
         "resize_mode": "crop and resize", "processor_res": 512, "threshold_a": None,
         "threshold_b": None, "guidance_start": 0.0, "guidance_end": 1.0,
         "pixel_perfect": False, "control_mode": "Balanced"},
        {"image": "inputs/y.png", "module": "scribble", "model": "demo-canny", "weight": 0.5,
         "resize_mode": "resize and fill", "processor_res": 256, "threshold_a": 90.0,
         "threshold_b": None, "guidance_start": 0.1, "guidance_end": 0.8,
         "pixel_perfect": True, "control_mode": "ControlNet is more important"},
    ]  # fmt: skip
    session = make_session(prompt="a red square", controlnet=units)
    text = a1111_parameters(session)
    assert (
        'ControlNet 0: "Module: canny, Model: demo-canny, Weight: 1, Resize Mode: Crop and '
        "Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, "
        'Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"'
    ) in text
    assert (
        'ControlNet 1: "Module: scribble, Model: demo-canny, Weight: 0.5, Resize Mode: Resize '
        "and Fill, Processor Res: 256, Threshold A: 90, Guidance Start: 0.1, Guidance End: 0.8, "
        'Pixel Perfect: True, Control Mode: ControlNet is more important"'
    ) in text
    read = from_a1111_text(text)["controlnet"]
    expected = [{k: v for k, v in unit.items() if k != "image"} for unit in units]
    expected[0] |= {"threshold_a": 100.0, "threshold_b": 200.0}  # canny's, as written
    expected[1].pop("threshold_b")
    assert read == expected


def test_pixel_perfect_maps_the_control_image_pixel_for_pixel_as_the_extension_does():
    # A 1000x500 picture onto 512x512: cropped, its short side must reach 512; fitted
    # whole, its long side 512, so its short side 256.
    assert preprocessors.pixel_perfect_resolution((1000, 500), (512, 512), "crop and resize") == 512
    assert preprocessors.pixel_perfect_resolution((1000, 500), (512, 512), "resize and fill") == 256
    unit = controlnet.ControlUnit(square_at((0, 0, 10, 10), size=256), "demo-canny", "canny",
                                  pixel_perfect=True)  # fmt: skip
    assert controlnet.control_image(unit, (128, 96)).size == (128, 96)


def shape_sketch(position: str, size: int = 64) -> Image.Image:
    """A white square on black at a named off-centre position of the demo's world."""
    from generator.pipelines.demo import world

    cx, cy = world.POSITIONS[position]
    half = 0.15 * size
    box = (cx * size - half, cy * size - half, cx * size + half, cy * size + half)
    return square_at(tuple(round(v) for v in box), size=size)


@pytest.mark.any_database
def test_a_real_worker_draws_the_demo_shape_where_the_canny_control_image_has_it(
    web_server, start_worker
):
    """webuiapi's own ControlNetUnit through /sdapi/v1/txt2img: the prompt names no position,
    so the demo alone centres its shape; with demo-canny it follows the edges to the corner."""
    import webuiapi

    from generator.pipelines.demo import world

    start_worker()
    _, key = issue_key(user_for("tool"), "tests")
    port = int(web_server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=key)
    assert "demo-canny" in api.controlnet_model_list()
    prompt = "a red square on a blue background"
    unit = webuiapi.ControlNetUnit(
        image=shape_sketch("top left"), module="canny", model="demo-canny",
        threshold_a=100, threshold_b=200, resize_mode="Crop and Resize", pixel_perfect=True,
    )  # fmt: skip
    # Dicts of their own: webuiapi's default `alwayson_scripts={}` is one dict shared by
    # every call in the process, which a call with units fills with them (every later
    # webuiapi request of the test run would send this unit).
    guided = api.txt2img(prompt=prompt, steps=8, width=64, height=64, seed=5,
                         controlnet_units=[unit], alwayson_scripts={})  # fmt: skip
    plain = api.txt2img(prompt=prompt, steps=8, width=64, height=64, seed=5, alwayson_scripts={})
    # With the ControlNet the square is at the top left and nowhere else; without, the demo
    # centres it (and so large that it covers the top left too).
    where = ("top left", "center", "bottom right")
    assert [world.colour_at(guided.image, p) for p in where] == ["red", "blue", "blue"]
    assert world.colour_at(plain.image, "center") == "red"

    # The unit is kept with the job: its image stored, its settings in the infotext.
    assert (
        'ControlNet 0: "Module: canny, Model: demo-canny, Weight: 1' in guided.info["infotexts"][0]
    )
    assert "alwayson_scripts.controlnet.args[0].low_vram" not in guided.info["ignored"]
    session = GenerationSession.objects.get(pk=guided.info["session_ids"][0])
    [stored] = session.controlnet
    assert (stored["module"], stored["model"], stored["threshold_a"]) == (
        "canny",
        "demo-canny",
        100,
    )
    with default_storage.open(stored["image"]) as file:
        assert Image.open(file).size == (64, 64)
    [shown] = get(f"/api/sessions/{session.pk}", key).json()["control_images"]
    assert shown["module"] == "canny" and shown["image_url"].endswith(".png")


@pytest.mark.any_database
def test_the_page_previews_a_preprocessor_and_queues_its_unit_with_the_file_it_sent(
    django_capture_on_commit_callbacks,
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = Client()
    page = client.get("/").content.decode()
    assert 'id="controlnet-panel"' in page and '<option value="canny" selected>' in page

    image = square_at((20, 20, 60, 60))
    png = base64.b64decode(b64(image))
    preview = client.post(
        "/api/controlnet/detect",
        {"image": SimpleUploadedFile("c.png", png), "module": "canny", "processor_res": "128"},
    )
    assert preview.status_code == 200, preview.content
    data_url = preview.json()["image"]
    assert data_url.startswith("data:image/png;base64,")
    edges = np.asarray(decoded(data_url.split(",", 1)[1]).convert("L"))
    assert np.array_equal(edges, cv2.Canny(np.asarray(image), 100, 200))
    unknown = client.post(
        "/api/controlnet/detect", {"image": SimpleUploadedFile("c.png", png), "module": "x"}
    )
    assert unknown.status_code == 400 and "module" in unknown.json()["errors"]

    # The page's form: the unit as JSON, its image as a file of its own.
    answer = client.post(
        "/api/generate",
        {"prompt": "a red square", "steps": 2, "controlnet": '[{"module": "canny", '
         '"model": "demo-canny", "weight": 0.75}]',
         "controlnet_image_0": SimpleUploadedFile("c.png", png)},
    )  # fmt: skip
    assert answer.status_code == 202, answer.content
    [session] = GenerationSession.objects.all()
    [unit] = session.controlnet
    assert (unit["module"], unit["model"], unit["weight"]) == ("canny", "demo-canny", 0.75)
    assert unit["image"].startswith("inputs/") and default_storage.exists(unit["image"])
    assert answer.json()["control_images"][0]["module"] == "canny"
    with django_capture_on_commit_callbacks(execute=True):
        session.delete()  # the control image goes with its session
    assert not default_storage.exists(unit["image"])


@pytest.mark.any_database
def test_the_control_modes_scale_the_residuals_as_the_extension_does():
    image = square_at((0, 0, 10, 10))
    ones = ([torch.ones(2, 1, 2, 2) for _ in range(3)], torch.ones(2, 1, 1, 1))
    balanced = controlnet.ControlUnit(image, "demo-canny")
    assert controlnet.layer_scaling_hook(balanced, guided=True) is None

    prompt = controlnet.ControlUnit(image, "demo-canny", control_mode="My prompt is more important")
    down, mid = controlnet.layer_scaling_hook(prompt, guided=True)(None, (), ones)
    # 0.825 ** (n - 1 - i) for the n = 4 residuals: the coarsest (mid) at full weight.
    assert [round(float(r[0, 0, 0, 0]), 4) for r in down] == [0.5615, 0.6806, 0.825]
    assert float(mid[1, 0, 0, 0]) == 1.0 and float(mid[0, 0, 0, 0]) == 1.0

    strong = controlnet.ControlUnit(
        image, "demo-canny", control_mode="ControlNet is more important"
    )
    down, mid = controlnet.layer_scaling_hook(strong, guided=True)(None, (), ones)
    # Only the prompt's half of the guidance batch ([negative, prompt]) gets the control.
    assert float(mid[0].abs().sum()) == 0 and float(mid[1, 0, 0, 0]) == 1.0
    assert float(down[2][0].abs().sum()) == 0 and round(float(down[2][1, 0, 0, 0]), 3) == 0.825
    down, mid = controlnet.layer_scaling_hook(strong, guided=False)(None, (), ones)
    assert float(mid[0, 0, 0, 0]) == 1.0  # no guidance: no negative half to leave out


@pytest.mark.django_db(transaction=True)
@pytest.mark.any_database
def test_two_units_steer_image_to_image_and_inpainting_and_a_single_file_controlnet_loads(
    settings, tmp_path
):
    """The worker's loop in this process: img2img with a diffusers folder's ControlNet and a
    single .safetensors file of it (offline, with the shipped config of its family) as two
    units; then inpainting with one."""
    from django.core.management import call_command

    from generator.models import Status
    from generator.pipelines.demo import CONTROLNET

    folder = tmp_path / "ControlNet"
    folder.mkdir()
    settings.SD_CONTROLNET_DIR = folder
    (folder / "demo_single.safetensors").write_bytes(
        (CONTROLNET / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    sketch = b64(shape_sketch("bottom right"))
    start = base64.b64decode(b64(square_at((0, 0, 63, 63), size=64, fill=(40, 80, 220))))
    mask = base64.b64decode(sketch)
    units = [
        {"image": sketch, "module": "canny", "model": "demo-canny", "pixel_perfect": True},
        {"image": sketch, "module": "canny", "model": "demo_single", "weight": 0.5,
         "control_mode": "My prompt is more important", "pixel_perfect": True},
    ]  # fmt: skip
    client = Client()
    for chosen, masked in ((units, False), (units[1:], True)):
        body = {"prompt": "a red square on a blue background", "steps": 4, "strength": 1.0,
                "init_image": SimpleUploadedFile("start.png", start),
                "controlnet": json.dumps(chosen)}  # fmt: skip
        if masked:
            body["mask_image"] = SimpleUploadedFile("mask.png", mask)
        answer = client.post("/api/generate", body)
        assert answer.status_code == 202, answer.content
    call_command("runworker", once=True, verbosity=0)
    call_command("runworker", once=True, verbosity=0)
    img2img, inpaint = GenerationSession.objects.order_by("created_at")
    assert (img2img.status, img2img.mode, img2img.error) == (Status.COMPLETED, "img2img", "")
    assert (inpaint.status, inpaint.mode, inpaint.error) == (Status.COMPLETED, "inpaint", "")
    assert [u["model"] for u in img2img.controlnet] == ["demo-canny", "demo_single"]
    with img2img.image.open("rb") as file:
        from generator.pipelines.demo import world

        image = Image.open(io.BytesIO(file.read()))
        # Four steps from a blue start: the shape (reddish) where the sketch has it.
        assert (
            world.colour_at(image, "top left") == "blue" != world.colour_at(image, "bottom right")
        )


def test_a_long_thin_picture_at_a_high_processor_resolution_stays_within_the_pixel_bound():
    thin = Image.new("RGB", (4000, 20), "white")
    result = preprocessors.run(thin, "canny", 2048)
    # At 2048 it would be 409600x2048; scaled to the bound instead, its shape kept.
    assert result.size == (28963, 144)
    assert result.width * result.height <= preprocessors.MAX_PIXELS
