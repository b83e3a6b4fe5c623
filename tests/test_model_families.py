"""Models beyond SD 1.x, on tiny random SDXL and SD3 pipelines built here (tests/tiny_models.py):
each generates with progress through the worker, keeps its own scheduler family, and takes its
default size from its own configs."""

import pytest
from django.test import Client

from generator.models import Status
from generator.pipelines import GenerationRequest, create_backend
from tests import tiny_models
from tests.test_openvino import run_and_record

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]


@pytest.fixture(scope="module")
def models(django_db_blocker):
    return {"sdxl": str(tiny_models.sdxl()), "sd3": str(tiny_models.sd3())}


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_each_family_generates_with_progress_at_its_own_size(models, family, settings):
    settings.SD_MODELS = ["demo", models[family]]
    response = Client().post(
        "/api/generate",
        {"prompt": "a red circle", "model": models[family], "steps": 3},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    from generator.models import GenerationSession

    session = GenerationSession.objects.get(pk=response.json()["session_id"])
    assert (session.width, session.height, session.scheduler) == (64, 64, "Euler")  # its own
    steps, _ = run_and_record(session)
    assert session.status == Status.COMPLETED, session.error
    # In order, the last always (the writer may coalesce steps it could not keep up with).
    assert steps == sorted(set(steps)) and steps[-1] == (3, 3)


def test_a_flow_matching_model_keeps_its_scheduler_family(models, settings):
    backend = create_backend("pytorch", models["sd3"], "cpu")
    backend.load(lambda phase: None)
    for sampler, expected in [
        ("Euler", "FlowMatchEulerDiscreteScheduler"), ("Heun", "FlowMatchHeunDiscreteScheduler")
    ]:  # fmt: skip
        request = GenerationRequest("a circle", "", 2, 5.0, 64, 64, 1, scheduler=sampler)
        backend.generate(request, lambda *a: True, lambda phase: None)
        assert type(backend.pipe.scheduler).__name__ == expected
        assert backend.pipe.scheduler.config.shift == 3.0  # the model's own settings kept

    # The web refuses a sampler of another family, naming the field; the SD model takes it.
    settings.SD_MODELS = ["demo", models["sd3"]]
    for model, sampler, status in [
        (models["sd3"], "DPM++ 2M", 400), (models["sd3"], "Heun", 202),
        ("demo", "DPM++ 2M", 202), ("demo", "Heun", 400),
    ]:  # fmt: skip
        response = Client().post(
            "/api/generate",
            {"prompt": "x", "model": model, "scheduler": sampler},
            content_type="application/json",
        )
        assert response.status_code == status, (model, sampler, response.content)
        if status == 400:
            assert "does not fit this model" in response.json()["errors"]["scheduler"][0]


def test_sdxl_prompts_go_through_both_encoders_as_a1111_weights_them(models):
    import numpy as np

    backend = create_backend("pytorch", models["sdxl"], "cpu")
    backend.load(lambda phase: None)

    def pixels(prompt):
        request = GenerationRequest(prompt, "", 3, 5.0, 64, 64, seed=4)
        image = backend.generate(request, lambda *a: True, lambda phase: None)
        return np.asarray(image).astype(int)

    plain = pixels("a red circle")
    # Exactly what diffusers makes of the text itself (its own two-encoder path)...
    import torch

    from generator.pipelines.schedulers import make_scheduler

    backend.pipe.scheduler = make_scheduler("Euler", backend.scheduler_config)
    own = backend.pipe(
        prompt="a red circle", num_inference_steps=3, guidance_scale=5.0, width=64, height=64,
        generator=torch.Generator().manual_seed(4),
    ).images[0]  # fmt: skip
    assert (np.asarray(own).astype(int) == plain).all()
    # ...the syntax never reaches the model, and weights and long prompts do.
    assert (pixels("a (red circle:1.0)") == plain).all()
    assert np.abs(pixels("a (red:1.8) circle") - plain).mean() > 0
    long = "a red circle, " + ", ".join(["plain"] * 80)
    assert np.abs(pixels(long + " green") - pixels(long)).mean() > 0


def test_distilled_models_get_their_own_steps_guidance_and_sampler(models, tmp_path, make_session):
    import json
    import shutil

    from tests.test_openvino import run_and_record

    turbo = tmp_path / "tiny-sdxl-turbo"
    shutil.copytree(models["sdxl"], turbo)
    session = make_session(prompt="a red circle", model=str(turbo), steps=None)
    assert (session.steps, session.guidance_scale, session.scheduler) == (1, 0.0, "Euler")
    session.delete()

    lcm = tmp_path / "tiny-lcm"  # the same model, distilled: its scheduler says LCM
    shutil.copytree(models["sdxl"], lcm)
    config_path = lcm / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text()) | {"_class_name": "LCMScheduler"}
    config_path.write_text(json.dumps(config))
    index_path = lcm / "model_index.json"
    index_path.write_text(
        json.dumps(
            json.loads(index_path.read_text()) | {"scheduler": ["diffusers", "LCMScheduler"]}
        )
    )
    session = make_session(prompt="a red circle", model=str(lcm), steps=None)
    assert (session.steps, session.guidance_scale, session.scheduler) == (4, 1.0, "LCM")
    steps, _ = run_and_record(session)
    assert session.status == Status.COMPLETED, session.error
    assert steps[-1] == (4, 4)
    # Asked for, the user's own settings win.
    asked = make_session(prompt="x", model=str(lcm), steps=6, guidance_scale=2.0)
    assert (asked.steps, asked.guidance_scale) == (6, 2.0)
