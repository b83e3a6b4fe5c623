"""Image to image, inpainting, batches and PNG info: real uploads, real pipelines, both backends."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test import Client
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from generator.metadata import png_info
from generator.models import GenerationSession, Status

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]


def png(size=(72, 64), seed=0, info=None, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def mask_png(size=(72, 64), box=(24, 16, 48, 40)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str, data: bytes):
    file = io.BytesIO(data)
    file.name = name
    return file


def post(client, fields: dict, files: dict | None = None):
    data = dict(fields) | {name: upload(f"{name}.png", d) for name, d in (files or {}).items()}
    return client.post("/api/generate", data)


def run_jobs(count=1, backend_args=()):
    for _ in range(count):
        call_command("runworker", once=True, verbosity=0)


def inputs_left() -> list:
    try:
        return default_storage.listdir("inputs")[1]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_image_to_image_counts_the_steps_it_runs_and_keeps_the_image_size(backend):
    client = Client()
    answer = post(
        client,
        {"prompt": "a fox", "steps": 8, "strength": 0.5, "seed": 3, "backend": backend},
        {"init_image": png()},
    )
    assert answer.status_code == 202, answer.content
    assert answer.json()["total_steps"] == 4  # 0.5 of 8 steps

    run_jobs()

    session = GenerationSession.objects.get()
    assert session.status == Status.COMPLETED, session.error
    assert (session.current_step, session.total_steps) == (4, 4)
    assert len(session.step_seconds) == 4
    with Image.open(session.image.path) as image:
        assert image.size == (72, 64)  # the input's size: no width or height given
        assert "Denoising strength: 0.5" in image.info["parameters"]


def halves(left, right, size=(72, 64)) -> bytes:
    """A PNG whose left half is one colour and right half another."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_image_to_image_draws_from_its_init_image(backend):
    """Two init images, the same prompt and seed at strength 0.5: each output follows its
    own input (an img2img that ignored its init image would give the same picture twice)."""
    red_blue, blue_red = halves((220, 30, 30), (30, 30, 220)), halves((30, 30, 220), (220, 30, 30))
    client = Client()
    ids = []
    for init in (red_blue, blue_red):
        fields = {"prompt": "a fox", "steps": 8, "strength": 0.5, "seed": 3, "backend": backend}
        answer = post(client, fields, {"init_image": init})
        assert answer.status_code == 202, answer.content
        ids.append(answer.json()["session_id"])

    run_jobs(2)

    outputs, inputs = [], []
    for session_id, init in zip(ids, (red_blue, blue_red), strict=True):
        session = GenerationSession.objects.get(pk=session_id)
        assert session.status == Status.COMPLETED, session.error
        outputs.append(np.asarray(Image.open(session.image.path).convert("RGB")).astype(int))
        inputs.append(np.asarray(Image.open(io.BytesIO(init)).convert("RGB")).astype(int))

    def distance(a, b) -> float:
        return float(np.abs(a - b).mean())

    assert distance(outputs[0], outputs[1]) > 30  # mean absolute difference, of 255
    for output, own, other in ((*outputs[:1], *inputs), (outputs[1], *inputs[::-1])):
        assert distance(output, own) + 30 < distance(output, other)


@pytest.mark.parametrize("backend", ["pytorch", "openvino"])
def test_inpainting_leaves_the_unmasked_area_exactly_as_it_was(backend):
    client = Client()
    original = png(seed=1)
    answer = post(
        client,
        {"prompt": "a red square", "steps": 6, "strength": 1, "mask_blur": 2, "backend": backend},
        {"init_image": original, "mask_image": mask_png()},
    )
    assert answer.status_code == 202, answer.content

    run_jobs()

    session = GenerationSession.objects.get()
    assert session.status == Status.COMPLETED, session.error
    before = np.asarray(Image.open(io.BytesIO(original)).convert("RGB")).astype(int)
    after = np.asarray(Image.open(session.image.path).convert("RGB")).astype(int)
    outside = np.ones(before.shape[:2], bool)
    outside[16 - 8 : 40 + 8, 24 - 8 : 48 + 8] = False  # the mask and its blurred edge
    assert (after[outside] == before[outside]).all()
    inside = (slice(20, 36), slice(28, 44))
    assert np.abs(after[inside] - before[inside]).mean() > 10  # the masked area was repainted


def test_the_masked_area_can_start_filled_or_from_noise():
    client = Client()
    for fill in ("fill", "latent noise"):
        answer = post(
            client,
            {"prompt": "x", "steps": 4, "strength": 0.5, "inpainting_fill": fill},
            {"init_image": png(), "mask_image": mask_png()},
        )
        assert answer.status_code == 202
        # From noise, every step runs whatever the strength.
        assert answer.json()["total_steps"] == (4 if fill == "latent noise" else 2)
    run_jobs(2)
    statuses = set(GenerationSession.objects.values_list("status", flat=True))
    assert statuses == {Status.COMPLETED}


def test_count_queues_a_batch_with_consecutive_seeds(settings):
    client = Client()
    answer = post(client, {"prompt": "a fox", "count": 3, "seed": 10, "steps": 2})
    assert answer.status_code == 202
    ids = answer.json()["session_ids"]
    assert answer.json()["session_id"] == ids[0] and len(ids) == 3
    sessions = [GenerationSession.objects.get(pk=pk) for pk in ids]
    assert [s.seed for s in sessions] == [10, 11, 12]
    assert len({s.batch_id for s in sessions}) == 1 and sessions[0].batch_id is not None

    listed = client.get("/api/sessions", {"ids": ",".join(ids)}).json()["sessions"]
    assert [s["parameters"]["seed"] for s in listed] == [10, 11, 12]
    random_seeds = post(client, {"prompt": "a fox", "count": 2}).json()["session_ids"]
    a, b = (GenerationSession.objects.get(pk=pk).seed for pk in random_seeds)
    assert b == (a + 1) % 2**32


def test_an_image_input_is_shared_by_its_batch_and_deleted_with_the_last_session():
    client = Client()
    ids = post(client, {"prompt": "x", "count": 2}, {"init_image": png()}).json()["session_ids"]
    first, second = (GenerationSession.objects.get(pk=pk) for pk in ids)
    assert first.init_image.name == second.init_image.name
    first.delete()
    assert default_storage.exists(second.init_image.name)
    second.delete()
    assert not default_storage.exists(second.init_image.name)


def test_png_info_reads_sdsites_own_metadata_and_a1111s():
    client = Client()
    session = GenerationSession(
        prompt="a lighthouse", negative_prompt="fog", steps=12, guidance_scale=6.5, width=256,
        height=192, seed=77, scheduler="DPM++ 2M", model="demo", backend="pytorch",
    )  # fmt: skip
    own = client.post("/api/png-info", {"image": upload("a.png", png(info=png_info(session)))})
    assert own.status_code == 200
    assert own.json()["source"] == "sdsite"
    assert own.json()["parameters"] | {} == session.parameter_values()

    a1111 = PngInfo()
    a1111.add_text(
        "parameters",
        "a cat\nNegative prompt: dog\nSteps: 30, Sampler: Euler a, CFG scale: 5, Seed: 9, "
        "Size: 512x768, Model hash: abc, Model: v1-5",
    )
    read = client.post("/api/png-info", {"image": upload("b.png", png(info=a1111))}).json()
    assert read["source"] == "automatic1111"
    assert read["parameters"] == {
        "prompt": "a cat",
        "negative_prompt": "dog",
        "scheduler": "Euler a",
        "steps": 30,
        "guidance_scale": 5.0,
        "seed": 9,
        "width": 512,
        "height": 768,
    }

    bare = client.post("/api/png-info", {"image": upload("c.png", png())}).json()
    assert bare["parameters"] == {} and "no generation settings" in bare["message"]


def truncated() -> bytes:
    return png()[:200]


def bomb() -> bytes:
    """A small file that decodes to 100 million pixels."""
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` and holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns, and refuses over 179 Mpx
def test_an_image_with_too_many_pixels_is_refused_as_such(side):
    data = bomb() if side == 10_000 else png_header(side, side)
    answer = post(Client(), {"prompt": "x"}, {"init_image": data})
    assert answer.status_code == 400
    message = answer.json()["errors"]["init_image"][0]
    assert "pixels" in message and "16,777,216 allowed" in message, message


BAD_INPUTS = [
    ({}, {"init_image": b"not an image at all"}, "init_image"),
    ({}, {"init_image": "truncated"}, "init_image"),
    ({}, {"init_image": "bomb"}, "init_image"),
    ({}, {"init_image": png(), "mask_image": mask_png(size=(64, 64))}, "mask_image"),
    ({}, {"mask_image": mask_png()}, "mask_image"),
    ({"strength": 0}, {"init_image": png()}, "strength"),
    ({"strength": 1.5}, {"init_image": png()}, "strength"),
    ({"strength": 0.05, "steps": 10}, {"init_image": png()}, "strength"),
    ({"count": 9}, {}, "count"),
    ({"count": 0}, {}, "count"),
]


@pytest.mark.parametrize(("fields", "files", "field"), BAD_INPUTS)
def test_bad_input_is_a_400_naming_the_field_with_nothing_queued_or_left(fields, files, field):
    files = {
        name: truncated() if data == "truncated" else bomb() if data == "bomb" else data
        for name, data in files.items()
    }
    before = inputs_left()
    answer = post(Client(), {"prompt": "x", "steps": 10} | fields, files)
    assert answer.status_code == 400
    assert field in answer.json()["errors"], answer.json()
    assert not GenerationSession.objects.exists()
    assert inputs_left() == before


def test_an_image_larger_than_the_model_gives_its_shape_at_the_models_size():
    from generator.images import output_size

    assert output_size(Image.new("L", (4032, 3024)), 512) == (584, 440)  # a phone's photo
    assert output_size(Image.new("L", (72, 64)), 128) == (72, 64)  # smaller: its own size
    assert output_size(Image.new("L", (1000, 4000)), 128) == (64, 256)

    answer = post(Client(), {"prompt": "x"}, {"init_image": png(size=(1024, 768))})
    assert answer.status_code == 202, answer.content
    session = GenerationSession.objects.get()
    assert (session.width, session.height) == (144, 104)  # the demo model draws at 128


def test_an_upload_over_the_size_limit_is_refused_before_decoding(settings):
    settings.SD_MAX_UPLOAD_MB = 0.001  # about 1 KB
    answer = post(Client(), {"prompt": "x"}, {"init_image": png(size=(128, 128))})
    assert answer.status_code == 400
    assert "larger than" in answer.json()["errors"]["init_image"][0]


def test_the_generate_command_takes_an_image_and_a_mask(tmp_path):
    (tmp_path / "in.png").write_bytes(png())
    (tmp_path / "mask.png").write_bytes(mask_png())
    out = io.StringIO()
    call_command(
        "generate", "a fox", steps=4, init_image=str(tmp_path / "in.png"),
        mask_image=str(tmp_path / "mask.png"), inline=True, stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    session = GenerationSession.objects.get()
    assert session.status == Status.COMPLETED and session.mode == "inpaint"
    assert json.loads(Image.open(session.image.path).info["sdsite"])["mask_blur"] == 4
