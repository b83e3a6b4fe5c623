"""`clip_skip`, the parameter added through the spec alone: it changes the image, it is
bounded by the model's text encoder, A1111 sets it through `override_settings` and reads it
in the infotext and `info`; and the migration that moved the parameters into one JSON field."""

import io

import numpy as np
import pytest
import webuiapi
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.metadata import from_a1111_text, read_parameters
from generator.models import GenerationSession, Status

pytestmark = pytest.mark.django_db(transaction=True)

DIFFERENCE = 4.0
"""Mean absolute difference (0-255) of two demo images that differ only in clip skip, at
least. Measured on the demo at 128x128, 8 steps (the same request twice gives 0.00): 11.18
at seed 3, 11.32 at seed 4, 7.77 at seed 5."""


def image_of(session: GenerationSession) -> Image.Image:
    with session.image.open("rb") as file:
        image = Image.open(io.BytesIO(file.read()))
        image.load()
    return image


@pytest.mark.any_database
def test_clip_skip_2_draws_another_image_than_1_and_the_png_says_so_as_a1111_does():
    client = Client()
    ids = []
    for clip_skip in (1, 2):
        answer = client.post(
            "/api/generate",
            {"prompt": "a red circle on a blue background", "steps": 8, "seed": 3,
             "clip_skip": clip_skip},
        )  # fmt: skip
        assert answer.status_code in (200, 201, 202), answer.content
        ids.append(answer.json()["session_id"])
    for _ in ids:
        call_command("runworker", once=True, verbosity=0)
    first, second = (GenerationSession.objects.get(pk=pk) for pk in ids)
    assert (first.status, second.status) == (Status.COMPLETED, Status.COMPLETED)
    assert (first.clip_skip, second.clip_skip) == (1, 2)
    one, two = image_of(first), image_of(second)
    difference = np.abs(np.asarray(one, float) - np.asarray(two, float)).mean()
    assert difference > DIFFERENCE, f"clip skip 1 vs 2: mean abs difference {difference:.2f}"

    # A1111 writes `Clip skip: 2`, and nothing at 1; both readers give the value back.
    assert "Clip skip: 2" in two.info["parameters"]
    assert "Clip skip" not in one.info["parameters"]
    assert from_a1111_text(two.info["parameters"])["clip_skip"] == 2
    assert "clip_skip" not in from_a1111_text(one.info["parameters"])
    source, values = read_parameters(two)
    assert (source, values["clip_skip"]) == ("sdsite", 2)


@pytest.mark.any_database
def test_a_clip_skip_past_the_demo_text_encoders_two_layers_is_a_4xx_naming_it_and_the_maximum():
    client = Client()
    native = client.post("/api/generate", {"prompt": "x", "clip_skip": 3})
    assert native.status_code == 400
    assert native.json()["errors"]["clip_skip"] == ["clip_skip must be at most 2 for this model."]

    _, key = issue_key(user_for("tool"), "tests")
    a1111 = client.post(
        "/sdapi/v1/txt2img",
        {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 3}},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert a1111.status_code == 422
    [problem] = a1111.json()["detail"]
    assert problem["loc"] == ["body", "override_settings.CLIP_stop_at_last_layers"]
    assert problem["msg"] == "clip_skip must be at most 2 for this model."

    # The spec's own range (1-12) first, in each dialect's terms; and a string is no number.
    assert client.post("/api/generate", {"prompt": "x", "clip_skip": 13}).status_code == 400
    wrong_type = client.post(
        "/sdapi/v1/txt2img",
        {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": "2"}},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert wrong_type.status_code == 422
    loc = wrong_type.json()["detail"][0]["loc"]
    assert loc == ["body", "override_settings.CLIP_stop_at_last_layers"]
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_the_openvino_backend_refuses_a_clip_skip_it_cannot_apply():
    answer = Client().post("/api/generate", {"prompt": "x", "clip_skip": 2, "backend": "openvino"})
    assert answer.status_code == 400
    assert answer.json()["errors"]["clip_skip"] == [
        "clip_skip 2 needs the pytorch backend; the openvino backend cannot apply it."
    ]
    assert not GenerationSession.objects.exists()


@pytest.mark.any_database
def test_a1111_override_settings_clip_stop_at_last_layers_is_the_clip_skip_info_reports(
    web_server, start_worker
):
    start_worker()
    _, key = issue_key(user_for("tool"), "tests")
    port = int(web_server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=key)
    result = api.txt2img(
        prompt="a red circle", steps=2, width=64, height=64, seed=1,
        override_settings={"CLIP_stop_at_last_layers": 2},
    )  # fmt: skip
    assert result.info["clip_skip"] == 2
    assert "Clip skip: 2" in result.info["infotexts"][0]
    assert "override_settings.CLIP_stop_at_last_layers" not in result.info["ignored"]
    [session] = GenerationSession.objects.all()
    assert (session.status, session.clip_skip) == (Status.COMPLETED, 2)
    assert session.parameters["clip_skip"] == 2

    plain = api.txt2img(prompt="a red circle", steps=2, width=64, height=64, seed=1)
    assert plain.info["clip_skip"] == 1


@pytest.fixture
def back_to_the_latest_migrations():
    """Whatever the test leaves, the database ends at every app's newest migration (later
    migrations, such as 0016's queue trigger, are undone on the way back to 0014)."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_migration_moves_each_rows_parameters_into_the_json_and_back(
    back_to_the_latest_migrations,
):
    executor = MigrationExecutor(connection)
    before, after = (
        [("generator", "0014_progress_notify_trigger")],
        [("generator", "0015_parameters_json")],
    )
    executor.migrate(before)
    executor.loader.build_graph()
    Old = executor.loader.project_state(before).apps.get_model("generator", "GenerationSession")
    row = Old.objects.create(
        prompt="a fox", negative_prompt="", steps=9, guidance_scale=3.5, width=64, height=64,
        seed=4, scheduler="DPM++ 2M", schedule_type="Karras", backend="pytorch", model="demo",
        strength=0.5, resize_mode="crop and resize", mask_blur=7, inpainting_fill="fill",
    )  # fmt: skip
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    moved = GenerationSession.objects.get(pk=row.pk)
    assert moved.parameters == {
        "steps": 9, "guidance_scale": 3.5, "scheduler": "DPM++ 2M", "schedule_type": "Karras",
        "strength": 0.5, "resize_mode": "crop and resize", "mask_blur": 7,
        "inpainting_fill": "fill",
    }  # fmt: skip
    assert (moved.steps, moved.seed, moved.clip_skip) == (9, 4, 1)

    executor = MigrationExecutor(connection)
    executor.migrate(before)
    executor.loader.build_graph()
    Old = executor.loader.project_state(before).apps.get_model("generator", "GenerationSession")
    back = Old.objects.get(pk=row.pk)
    assert (back.steps, back.guidance_scale, back.mask_blur, back.scheduler) == (
        9, 3.5, 7, "DPM++ 2M"
    )  # fmt: skip
