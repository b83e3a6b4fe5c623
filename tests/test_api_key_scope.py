"""API keys open the API routes only (`/api/`, `/sdapi/`, `/v1/`), and there the key's
user follows their own jobs' progress streams, on the lean route uvicorn serves as on the
Django view."""

import asyncio
import base64
import itertools

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
