"""API keys open the API routes only (`/api/`, `/sdapi/`, `/v1/`), and there the key's
user follows their own jobs' progress streams, on the lean route uvicorn serves as on the
Django view."""

import asyncio
import base64
import itertools
import uuid

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from generator.apikeys import issue_key
from generator.models import GenerationSession, Status
from tests.sse_client import iter_events

pytestmark = pytest.mark.django_db(transaction=True)


def basic(username: str, key: str) -> dict:
    token = base64.b64encode(f"{username}:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.any_database
def test_a_staff_users_key_opens_neither_the_admin_nor_ops_nor_skips_their_csrf_check(
    web_server,
):
    staff = User.objects.create_user("boss", password="a long password", is_staff=True)
    staff.is_superuser = True
    staff.save()
    _, key = issue_key(staff)
    new_user = {"username": "intruder", "password1": "Xy7!long-pass", "password2": "Xy7!long-pass"}

    with httpx.Client(base_url=web_server.url, timeout=30) as client:
        for headers in (basic("boss", key), bearer(key)):
            admin = client.get("/admin/", headers=headers)
            assert admin.status_code == 302
            assert admin.headers["Location"] == "/admin/login/?next=/admin/"
            ops = client.get("/ops", headers=headers)
            assert ops.status_code == 302
            assert ops.headers["Location"].startswith("/admin/login/")
            assert client.get("/ops/stream", headers=headers).status_code == 403
            added = client.post("/admin/auth/user/add/", data=new_user, headers=headers)
            assert added.status_code == 403  # the CSRF check applies: no token, no user
        # The same key on an API route: it acts for its user, without a CSRF token.
        queued = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(key))
        assert queued.status_code == 202
    assert not User.objects.filter(username="intruder").exists()
    assert GenerationSession.objects.get().owner == staff


def first_event(url: str, headers: dict) -> tuple[int, dict | None]:
    """The status of a progress stream and its first message (None when refused)."""
    with httpx.Client(timeout=30) as client, client.stream("GET", url, headers=headers) as answer:
        if answer.status_code != 200:
            return answer.status_code, None
        events = (event for event in iter_events(answer.iter_lines()) if event.data)
        return 200, next(itertools.islice(events, 1)).data


@pytest.mark.any_database
def test_a_keys_user_follows_their_own_progress_stream_and_nobody_elses(web_server):
    alice = User.objects.create_user("alice")
    _, alice_key = issue_key(alice)
    _, bob_key = issue_key(User.objects.create_user("bob"))
    queued = httpx.post(
        f"{web_server.url}/api/generate",
        json={"prompt": "x"},
        headers=bearer(alice_key),
        timeout=30,
    )
    assert queued.status_code == 202
    session_id = queued.json()["session_id"]
    url = f"{web_server.url}/api/progress/{session_id}"

    # The lean route uvicorn serves the stream on.
    for headers in (bearer(alice_key), basic("alice", alice_key)):
        status, message = first_event(url, headers)
        assert status == 200
        assert message["type"] == "connected"
    for headers in (bearer(bob_key), basic("alice", "sdk_forged"), {}):
        assert first_event(url, headers) == (404, None)

    # The Django view, which serves it under any other server: the same answers.
    GenerationSession.objects.filter(pk=session_id).update(status=Status.CANCELLED)

    async def fetch(headers):
        response = await AsyncClient().get(f"/api/progress/{session_id}", headers=headers)
        if response.status_code != 200:
            return response.status_code, b""
        return 200, b"".join([chunk async for chunk in response.streaming_content])

    status, body = asyncio.run(fetch(bearer(alice_key)))
    assert status == 200 and b'"type":"cancelled"' in body
    assert asyncio.run(fetch(bearer(bob_key))) == (404, b"")


def answers(client: httpx.Client, headers: dict, session_id: str) -> dict:
    """What the reading API routes answer a request with these headers (and no cookie):
    the status, and what the lists of jobs hold."""
    with client.stream("GET", f"/api/progress/{session_id}", headers=headers) as stream:
        progress = stream.status_code
    a1111_progress = client.get("/sdapi/v1/progress", headers=headers)
    listed = client.get("/api/sessions", params={"ids": session_id}, headers=headers).json()
    queue = client.get("/api/queue", headers=headers).json()
    return {
        "session": client.get(f"/api/sessions/{session_id}", headers=headers).status_code,
        "listed": [s["session_id"] for s in listed["sessions"]],
        "queue": [s["session_id"] for s in queue["sessions"]],
        "progress stream": progress,
        "a1111 progress": (
            a1111_progress.status_code,
            a1111_progress.json().get("state", {}).get("job_count"),
        ),
        "a1111 options": client.get("/sdapi/v1/options", headers=headers).status_code,
        "a1111 models": client.get("/sdapi/v1/sd-models", headers=headers).status_code,
        "openai models": client.get("/v1/models", headers=headers).status_code,
    }


WRITES = {
    "generate": ("POST", "/api/generate", {"prompt": "y"}),
    "cancel": ("POST", "/api/sessions/{id}/cancel", None),
    "delete": ("DELETE", "/api/sessions/{id}", None),
    "interrupt": ("POST", "/sdapi/v1/interrupt", None),
    "skip": ("POST", "/sdapi/v1/skip", None),
    "txt2img": ("POST", "/sdapi/v1/txt2img", {"prompt": "y"}),
    "img2img": ("POST", "/sdapi/v1/img2img", {"prompt": "y", "init_images": []}),
    "openai generate": ("POST", "/v1/images/generations", {"prompt": "y"}),
}


def writes(client: httpx.Client, headers: dict, session_id: str, names) -> dict:
    """The status each writing route answers, with these headers and no cookie."""
    statuses = {}
    for name in names:
        method, url, body = WRITES[name]
        answer = client.request(method, url.format(id=session_id), json=body, headers=headers)
        assert answer.headers["content-type"] == "application/json", (name, answer.text)
        statuses[name] = answer.status_code
    return statuses


def test_a_revoked_key_is_refused_on_every_api_route_and_changes_nothing(web_server):
    row, key = issue_key(User.objects.create_user("alice"))
    with httpx.Client(base_url=web_server.url, timeout=30) as client:
        queued = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(key))
        assert queued.status_code == 202
        session_id = queued.json()["session_id"]
        # Running, so that an interrupt or skip that went through would ask it to stop.
        GenerationSession.objects.filter(pk=session_id).update(status=Status.RUNNING)
        assert answers(client, bearer(key), session_id) == {
            "session": 200, "listed": [session_id], "queue": [session_id],
            "progress stream": 200, "a1111 progress": (200, 1), "a1111 options": 200,
            "a1111 models": 200, "openai models": 200,
        }  # fmt: skip

        row.revoke()
        for headers in (bearer(key), basic("alice", key)):
            assert answers(client, headers, session_id) == {
                "session": 404, "listed": [], "queue": [], "progress stream": 404,
                "a1111 progress": (401, None), "a1111 options": 401, "a1111 models": 401,
                "openai models": 401,
            }  # fmt: skip
            assert writes(client, headers, session_id, WRITES) == {
                "generate": 403, "cancel": 403, "delete": 403, "interrupt": 401, "skip": 401,
                "txt2img": 401, "img2img": 401, "openai generate": 401,
            }  # fmt: skip
    assert list(GenerationSession.objects.values_list("pk", "status", "cancel_requested")) == [
        (uuid.UUID(session_id), Status.RUNNING, False)
    ]


def test_a_key_reaches_only_its_owners_jobs(web_server):
    _, alice_key = issue_key(User.objects.create_user("alice"))
    _, bob_key = issue_key(User.objects.create_user("bob"))
    with httpx.Client(base_url=web_server.url, timeout=30) as client:
        queued = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(alice_key))
        session_id = queued.json()["session_id"]
        GenerationSession.objects.filter(pk=session_id).update(status=Status.RUNNING)

        assert answers(client, bearer(bob_key), session_id) == {
            "session": 404, "listed": [], "queue": [], "progress stream": 404,
            "a1111 progress": (200, 0), "a1111 options": 200, "a1111 models": 200,
            "openai models": 200,
        }  # fmt: skip
        # Bob's interrupt and skip stop bob's jobs: he has none running.
        names = ["cancel", "delete", "interrupt", "skip"]
        assert writes(client, bearer(bob_key), session_id, names) == {
            "cancel": 404, "delete": 404, "interrupt": 200, "skip": 200,
        }  # fmt: skip
        assert not GenerationSession.objects.get(pk=session_id).cancel_requested

        # Alice's key reaches it, the same way.
        assert writes(client, bearer(alice_key), session_id, ["interrupt"]) == {"interrupt": 200}
    assert GenerationSession.objects.get(pk=session_id).cancel_requested
