import json
import os
import subprocess
import sys
import uuid

import pytest
from django.db import connection
from django.test import Client

from generator.models import GenerationSession, Status

pytestmark = pytest.mark.django_db


def post_json(client, body, **extra):
    return client.post(
        "/api/generate", data=json.dumps(body), content_type="application/json", **extra
    )


def test_valid_request_queues_a_session_with_defaults(client):
    response = post_json(client, {"prompt": "a red fox in snow"})

    assert response.status_code == 202
    body = response.json()
    session = GenerationSession.objects.get(pk=body["session_id"])
    # The same session JSON as GET /api/sessions/<id>.
    assert body == client.get(f"/api/sessions/{session.pk}").json() | {
        "session_ids": [str(session.pk)]
    }
    assert (body["status"], body["total_steps"]) == ("pending", 20)
    assert body["progress_url"] == f"/api/progress/{session.pk}"
    assert session.status == Status.PENDING
    assert (session.steps, session.guidance_scale) == (20, 7.5)
    assert (session.width, session.height) == (128, 128)  # the demo model's own size
    assert (session.backend, session.model, session.scheduler) == ("pytorch", "demo", "Euler")
    assert 0 <= session.seed < 2**32


def test_form_fields_work_like_json(client):
    response = client.post(
        "/api/generate",
        {
            "prompt": "a boat",
            "steps": "7",
            "seed": "42",
            "width": "128",
            "backend": "openvino",
            "scheduler": "DPM++ 2M Karras",
        },
    )

    assert response.status_code == 202
    session = GenerationSession.objects.get(pk=response.json()["session_id"])
    assert (session.steps, session.seed, session.width, session.backend, session.scheduler) == (
        7,
        42,
        128,
        "openvino",
        "DPM++ 2M Karras",
    )


def test_given_seed_is_stored(client):
    response = post_json(client, {"prompt": "x", "seed": 2**32 - 1})
    assert GenerationSession.objects.get(pk=response.json()["session_id"]).seed == 2**32 - 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 1001),
        ("prompt", ["a", "list"]),
        ("negative_prompt", "x" * 1001),
        ("steps", 0),
        ("steps", 151),
        ("steps", "many"),
        ("steps", 2.5),
        ("guidance_scale", -0.1),
        ("guidance_scale", 30.5),
        ("guidance_scale", "NaN"),
        ("width", 56),
        ("width", 2056),
        ("width", 100),
        ("height", 4000),
        ("height", 260),
        ("seed", -1),
        ("seed", 2**32),
        ("backend", "tensorflow"),
        ("scheduler", "Heun++ 9000"),
    ],
)
def test_each_invalid_field_is_named_and_nothing_is_created(client, field, value):
    body = {"prompt": "a valid prompt", field: value}

    response = post_json(client, body)

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == [field]
    assert all(isinstance(message, str) and message for message in errors[field])
    assert not GenerationSession.objects.exists()


def test_missing_prompt_is_an_error(client):
    response = post_json(client, {"steps": 5})
    assert response.status_code == 400
    assert "prompt" in response.json()["errors"]
    assert not GenerationSession.objects.exists()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_rejected(client, body):
    response = client.post("/api/generate", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"]["__all__"]
    assert not GenerationSession.objects.exists()


def test_generate_requires_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    response = post_json(client, {"prompt": "x"})
    assert response.status_code == 403

    page = client.get("/")
    token = page.cookies["csrftoken"].value
    response = post_json(client, {"prompt": "x"}, headers={"X-CSRFToken": token})
    assert response.status_code == 202


def test_generate_accepts_only_post(client):
    assert client.get("/api/generate").status_code == 405


def test_session_endpoint_describes_the_session(client, make_session):
    session = make_session(prompt="a cat", steps=10, seed=7)

    body = client.get(f"/api/sessions/{session.pk}").json()

    assert body["session_id"] == str(session.pk)
    assert (body["status"], body["current_step"], body["total_steps"]) == ("pending", 0, 10)
    assert body["percentage"] == 0
    assert body["image_url"] is None and body["error"] is None
    assert body["parameters"]["prompt"] == "a cat"
    assert body["parameters"]["seed"] == 7


@pytest.mark.parametrize("prefix", ["/api/sessions/", "/api/progress/", "/s/"])
def test_unknown_ids_get_404(client, prefix):
    assert client.get(f"{prefix}{uuid.uuid4()}").status_code == 404


def test_the_page_renders_the_form_and_the_demo_notice(client):
    html = client.get("/").content.decode()
    assert 'id="generate-form"' in html
    assert "Generate image" in html
    assert 'role="progressbar"' in html
    assert "SD_MODEL" in html  # how to use a real model


def test_admin_lists_and_shows_sessions(admin_client, make_session):
    session = make_session(prompt="history entry")
    assert (
        "history entry" in admin_client.get("/admin/generator/generationsession/").content.decode()
    )
    detail = admin_client.get(f"/admin/generator/generationsession/{session.pk}/change/")
    assert detail.status_code == 200
    assert "history entry" in detail.content.decode()
    assert "Sampler: Euler, CFG scale: 7.5" in detail.content.decode()  # the PNG metadata


def test_a_key_request_needs_no_csrf_token_and_a_cookie_request_still_does():
    from generator.apikeys import issue_key, user_for

    _, key = issue_key(user_for("tool"))
    client = Client(enforce_csrf_checks=True)
    with_key = post_json(client, {"prompt": "x"}, headers={"Authorization": f"Bearer {key}"})
    assert with_key.status_code == 202
    session = GenerationSession.objects.get(pk=with_key.json()["session_id"])
    assert session.owner.username == "tool"  # the key's user owns it

    bad_key = post_json(client, {"prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert bad_key.status_code == 403  # no key, so the CSRF check applies
    assert post_json(client, {"prompt": "x"}).status_code == 403


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": True}, "prompt", "Must be a string."),
        ({"prompt": "x", "steps": "2"}, "steps", "Must be an integer."),
        ({"prompt": "x", "steps": True}, "steps", "Must be an integer."),
        ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale", "Must be a number."),
        ({"prompt": "x", "cout": 10000}, "cout", "Unknown field."),
        ({"prompt": "\ud800"}, "prompt", "Not valid Unicode text."),
    ],
)
def test_a_json_body_is_strict_about_types_text_and_field_names(client, body, field, message):
    response = post_json(client, body)
    assert response.status_code == 400
    assert response.json()["errors"][field] == [message]
    assert not GenerationSession.objects.exists()


def test_deeply_nested_json_is_a_400_not_a_500(client):
    response = client.post(
        "/api/generate", data="[" * 100_000 + "]" * 100_000, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["errors"]["__all__"] == ["The body nests deeper than 16 levels."]


def test_a_json_number_may_be_an_integer_where_a_float_is_asked():
    response = post_json(Client(), {"prompt": "x", "guidance_scale": 7, "steps": 3})
    assert response.status_code == 202


def test_progress_stats_are_for_staff_and_this_machine_only(admin_client):
    assert Client().get("/api/stats/progress").status_code == 200  # the test client is local
    elsewhere = Client(REMOTE_ADDR="203.0.113.7").get("/api/stats/progress")
    assert elsewhere.status_code == 403 and elsewhere.json()["message"]
    assert admin_client.get("/api/stats/progress", REMOTE_ADDR="203.0.113.7").status_code == 200


def test_errors_shown_to_users_carry_no_server_paths():
    from generator.worker.failures import describe_error

    error = OSError(2, "No such file or directory", "/tmp/sdsite-x/media/previews/abc-3.jpg")
    assert describe_error(error) == (
        "FileNotFoundError: [Errno 2] No such file or directory: 'abc-3.jpg'"
    )


def test_a_setup_problem_is_shown_in_its_own_words():
    from generator.pipelines.sources import ModelDownloadFailed
    from generator.worker.failures import describe_error

    why = "The model x/y is not on this worker and could not be downloaded from the Hugging Face"
    assert describe_error(ModelDownloadFailed(why)) == why  # not "ModelDownloadFailed: The..."


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's writer lock")
@pytest.mark.parametrize("rate_limit", ["", "30/m"])  # the rate's counter is in the database too
def test_a_locked_sqlite_database_is_a_503_with_retry_after(tmp_path, rate_limit):
    import sqlite3

    import httpx

    from generator.apikeys import issue_key, user_for
    from tests.support.processes import WebServer

    _, key = issue_key(user_for("tool"))
    server = WebServer(tmp_path, SD_SQLITE_TIMEOUT="0.5", SD_RATE_LIMIT=rate_limit)
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
        response = httpx.post(
            f"{server.url}/api/generate", json={"prompt": "x"},
            headers={"Authorization": f"Bearer {key}"}, timeout=30,
        )  # fmt: skip
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "busy" in response.json()["message"]
        holder.execute("ROLLBACK")
        retried = httpx.post(
            f"{server.url}/api/generate", json={"prompt": "x"},
            headers={"Authorization": f"Bearer {key}"}, timeout=30,
        )  # fmt: skip
        assert retried.status_code == 202  # the client retries, and nothing was lost
    finally:
        holder.close()
        server.stop()


CHECK_WITHOUT_TORCH = """
import sys

import django

django.setup()
import sdsite.urls  # every view, the dialects' too
from generator.forms import GenerateForm

refused = GenerateForm(data={"prompt": "x", "scheduler": "DDIM", "schedule_type": "Karras"})
assert not refused.is_valid() and "schedule_type" in refused.errors, refused.errors
taken = GenerateForm(
    data={"prompt": "a red circle", "scheduler": "Euler", "schedule_type": "Karras", "steps": 5}
)
assert taken.is_valid(), taken.errors
heavy = ("torch", "diffusers", "transformers", "openvino")
print(sorted(name for name in heavy if name in sys.modules))
"""


@pytest.mark.any_database
def test_the_web_checks_a_request_without_importing_torch():
    """The web process never needs torch: importing it made the first POST take seconds
    (the schedule type's check imported diffusers) and every web process hundreds of MB."""
    checked = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_TORCH],
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "[]"
