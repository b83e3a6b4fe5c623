"""Each browser sees only its own generations: the page, the API, the stream and /history."""

import json

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from generator.models import GenerationSession, Status

pytestmark = pytest.mark.django_db(transaction=True)


def generate(client, **fields) -> str:
    body = {"prompt": "a lighthouse", "steps": 3} | fields
    response = client.post("/api/generate", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return response.json()["session_id"]


def test_another_browser_can_neither_see_nor_touch_a_generation():
    alice, bob = Client(), Client()
    session_id = generate(alice)

    assert alice.get(f"/api/sessions/{session_id}").status_code == 200
    assert alice.get(f"/s/{session_id}").status_code == 200
    for response in (
        bob.get(f"/api/sessions/{session_id}"),
        bob.get(f"/s/{session_id}"),
        bob.post(f"/api/sessions/{session_id}/cancel"),
        bob.delete(f"/api/sessions/{session_id}"),
        bob.post(f"/s/{session_id}/delete"),
        bob.get(f"/api/progress/{session_id}"),  # the Django view of the stream
    ):
        assert response.status_code == 404
    assert GenerationSession.objects.get(pk=session_id).status == Status.PENDING


def test_the_progress_stream_on_uvicorn_checks_the_session_cookie(web_server):
    alice = Client()
    session_id = generate(alice)
    url = f"{web_server.url}/api/progress/{session_id}"
    cookie = {"sessionid": alice.cookies["sessionid"].value}

    with httpx.Client(timeout=10, cookies=cookie) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        data = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert "connected" in data
    assert httpx.get(url, timeout=10).status_code == 404  # no cookie
    assert httpx.get(url, cookies={"sessionid": "forged"}, timeout=10).status_code == 404
    bob = Client()
    generate(bob)  # a browser with an owner key of its own
    bob_cookie = {"sessionid": bob.cookies["sessionid"].value}
    assert httpx.get(url, cookies=bob_cookie, timeout=10).status_code == 404


def test_the_owner_cancels_and_deletes(tmp_path):
    alice = Client()
    cancelled, deleted = generate(alice), generate(alice)

    assert alice.post(f"/api/sessions/{cancelled}/cancel").json()["status"] == "cancelled"
    assert alice.delete(f"/api/sessions/{deleted}").status_code == 204
    assert not GenerationSession.objects.filter(pk=deleted).exists()


def test_history_lists_only_ones_own_newest_first_and_paginates(settings):
    settings.SD_HISTORY_PAGE_SIZE = 3
    alice, bob = Client(), Client()
    mine = [generate(alice, prompt=f"alice {i}") for i in range(4)]
    theirs = generate(bob, prompt="bob's secret")

    first = alice.get("/history").content.decode()
    second = alice.get("/history?page=2").content.decode()
    assert [p in first for p in ("alice 3", "alice 2", "alice 1")] == [True] * 3
    assert first.index("alice 3") < first.index("alice 1")
    assert "alice 0" in second and "alice 0" not in first
    assert "bob&#x27;s secret" not in first + second
    assert theirs not in first + second
    assert "bob&#x27;s secret" in bob.get("/history").content.decode()
    assert all(session_id in first + second for session_id in mine)
    assert first.count("not drawn yet") == 3  # queued: no picture yet, and none missing


def test_deleting_from_history_removes_the_files():
    alice = Client()
    session_id = generate(alice)
    image = default_storage.save(f"images/{session_id}.png", ContentFile(b"png"))
    preview = default_storage.save(f"previews/{session_id}-2.jpg", ContentFile(b"jpg"))
    GenerationSession.objects.filter(pk=session_id).update(
        status=Status.COMPLETED, image=image, preview=preview
    )

    response = alice.post(f"/s/{session_id}/delete", {"page": "1"})

    assert response.status_code == 302 and response["Location"] == "/history?page=1"
    assert not GenerationSession.objects.filter(pk=session_id).exists()
    assert not default_storage.exists(image) and not default_storage.exists(preview)


def test_use_these_settings_again_fills_the_form_with_a_new_seed_or_the_same_one():
    alice, bob = Client(), Client()
    session_id = generate(alice, prompt="a red boat", steps=7, seed=1234, width=128)

    page = alice.get(f"/?from={session_id}").content.decode()
    assert "a red boat</textarea>" in page
    assert 'value="7"' in page and 'value="128"' in page
    assert 'value="1234"' not in page  # "use these settings again": a new random seed
    same_seed = alice.get(f"/?from={session_id}&seed=same").content.decode()
    assert 'value="7"' in same_seed and 'value="1234"' in same_seed
    assert "a red boat" not in bob.get(f"/?from={session_id}").content.decode()
    assert alice.get("/?from=not-a-uuid").status_code == 200


def test_anonymous_generations_pass_to_the_account_at_login():
    alice = User.objects.create_user("alice", password="pw-123456")
    browser = Client()
    session_id = generate(browser)

    browser.force_login(alice)  # Django's login(), as a login form calls it
    session = GenerationSession.objects.get(pk=session_id)
    assert session.owner.username == "alice"
    other_device = Client()
    other_device.force_login(alice)
    assert other_device.get(f"/api/sessions/{session_id}").status_code == 200
    assert session_id in other_device.get("/history").content.decode()


def test_sessions_without_an_owner_are_reachable_by_id_but_in_nobodys_history(make_session):
    session = make_session()  # as the CLI makes them
    assert Client().get(f"/api/sessions/{session.pk}").status_code == 200
    assert str(session.pk) not in Client().get("/history").content.decode()
