"""OpenAI's image edits, variations and model names, driven by the real `openai` package
against a real web server and worker."""

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.dialects.openai import VARIATION_PROMPT, VARIATION_STRENGTH
from generator.models import GenerationSession, Status
from tests.support.processes import WebServer, WorkerProcess

# The dialect queues and waits through the database: CI runs it on both engines.
pytestmark = pytest.mark.django_db(transaction=True)

MAX_PIXELS = 300 * 300


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    tmp_path = tmp_path_factory.mktemp("openai")
    with django_db_blocker.unblock():
        web = WebServer(
            tmp_path, SD_MAX_UPLOAD_PIXELS=MAX_PIXELS, SD_OPENAI_MODEL_MAP="house-style=demo"
        )
        worker = WorkerProcess(tmp_path)
    yield web
    worker.stop()
    web.stop()


@pytest.fixture
def client(server):
    _, key = issue_key(user_for("painter"), "tests")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key)


def random_image(size=(128, 128), seed=0, mode="RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    return Image.fromarray(pixels.squeeze(), mode)


FAST = {"extra_body": {"steps": 2}}  # sdsite's own parameters ride in extra_body


def png(image: Image.Image) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ("image.png", buffer.getvalue(), "image/png")


def decoded(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json))).convert("RGB")


def stored(field) -> np.ndarray:
    with Image.open(field.path) as image:
        return np.asarray(image.convert("L") if image.mode == "L" else image.convert("RGB"))


def test_an_edit_repaints_the_transparent_area_of_the_mask_at_the_size_asked(client):
    original = random_image()
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (48, 48, 80, 80))  # OpenAI's mask: transparent = repaint

    result = client.images.edit(
        image=png(original), mask=png(mask), prompt="a red apple", size="64x64",
        model="gpt-image-1", user="someone", extra_body={"steps": 2, "seed": 7},
    )  # fmt: skip

    (item,) = result.data
    assert item.url is None  # GPT Image answers base64 unless told otherwise
    edited = np.asarray(decoded(item))
    assert edited.shape == (64, 64, 3)
    session = GenerationSession.objects.get()
    assert (session.model, session.prompt, session.strength) == ("demo", "a red apple", 1.0)
    assert (session.steps, session.seed) == (2, 7)
    assert session.owner.username == "painter"
    sdsite_mask = stored(session.mask_image)  # white = repaint, at the size asked
    assert sdsite_mask.shape == (64, 64)
    assert sdsite_mask[32, 32] == 255 and sdsite_mask[2, 2] == 0
    resized = np.asarray(original.resize((64, 64)))
    assert np.array_equal(stored(session.init_image), resized)
    assert np.array_equal(edited[:8], resized[:8])  # outside the mask: the original
    assert np.abs(edited[28:36, 28:36].astype(int) - resized[28:36, 28:36]).mean() > 5


def test_several_images_edit_the_first_and_a_transparent_image_is_its_own_mask(client):
    first = random_image(seed=1, mode="RGBA")
    first.putalpha(255)
    first.paste((0, 0, 0, 0), (0, 0, 32, 32))
    second = random_image(seed=2)

    result = client.images.edit(  # a list goes as image[] parts
        image=[png(first), png(second)], prompt="a pear", size="64x64", n=2,
        model="dall-e-2", response_format="b64_json", **FAST,
    )  # fmt: skip

    assert [decoded(item).size for item in result.data] == [(64, 64), (64, 64)]
    sessions = list(GenerationSession.objects.order_by("seed"))
    assert [s.seed for s in sessions] == [sessions[0].seed, sessions[0].seed + 1]
    expected = np.asarray(first.convert("RGB").resize((64, 64)))
    assert np.array_equal(stored(sessions[0].init_image), expected)
    mask = stored(sessions[0].mask_image)
    assert mask[4, 4] == 255 and mask[40, 40] == 0


def test_an_opaque_image_without_a_mask_is_image_to_image_and_dall_e_answers_a_url(client):
    result = client.images.edit(
        image=png(random_image(seed=3)), prompt="a plum", size="64x64", **FAST
    )

    assert result.data[0].url.startswith("http") and result.data[0].b64_json is None
    session = GenerationSession.objects.get()
    assert not session.mask_image and session.strength == 0.75  # the spec's default


def test_a_variation_is_image_to_image_with_the_image_s_own_prompt_or_a_plain_one(client):
    result = client.images.create_variation(
        image=png(random_image(seed=4)), n=2, size="64x64", response_format="b64_json", **FAST
    )
    assert [decoded(item).size for item in result.data] == [(64, 64), (64, 64)]
    made = GenerationSession.objects.filter(status=Status.COMPLETED).first()
    assert (made.prompt, made.strength) == (VARIATION_PROMPT, VARIATION_STRENGTH)

    # An image sdsite made carries its prompt in its metadata: its variation keeps it.
    made = client.images.generate(
        prompt="a quince", size="64x64", response_format="b64_json", **FAST
    )
    written = base64.b64decode(made.data[0].b64_json)
    client.images.create_variation(
        image=("x.png", written, "image/png"), size="64x64", model="gpt-image-1", **FAST
    )
    assert GenerationSession.objects.latest("created_at").prompt == "a quince"


def test_models_lists_the_served_models_and_the_names_clients_hard_code(client):
    names = [model.id for model in client.models.list()]
    assert names == ["demo", "dall-e-2", "dall-e-3", "gpt-image-1", "house-style"]
    result = client.images.generate(
        model="house-style", prompt="a fig", size="64x64", response_format="b64_json", **FAST
    )
    assert decoded(result.data[0]).size == (64, 64)
    assert GenerationSession.objects.get().model == "demo"


def test_bad_edits_answer_openai_s_error_naming_the_field(client, server):
    opaque_mask = png(Image.new("RGB", (64, 64), "white"))
    cases = [
        ({"image": png(random_image()), "mask": opaque_mask, "prompt": "x"}, "mask", "alpha"),
        ({"image": png(random_image((400, 400))), "prompt": "x"}, "image", "pixels"),
        ({"image": ("a.png", b"not an image", "image/png"), "prompt": "x"}, "image", "Not an"),
        ({"image": png(random_image()), "prompt": ""}, "prompt", "required"),
        ({"image": png(random_image()), "prompt": "x", "size": "65x65"}, "size", "8"),
        ({"image": png(random_image()), "prompt": "x", "n": 99}, "n", "Must be"),
    ]
    for fields, param, words in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.edit(**fields)
        assert refused.value.body["param"] == param, fields
        assert words in refused.value.body["message"], refused.value.body
        assert "/tmp" not in refused.value.body["message"]  # no server paths
    with pytest.raises(openai.NotFoundError) as refused:
        client.images.create_variation(image=png(random_image()), model="midjourney")
    assert refused.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").images.create_variation(
            image=png(random_image())
        )
    assert not GenerationSession.objects.exists()
