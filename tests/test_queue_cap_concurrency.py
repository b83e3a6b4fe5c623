"""The per-owner cap holds when one owner sends many requests at once, on every engine.

Counting an owner's jobs and queueing the new ones is one atomic step (limits.check_queue
inside services.session_create_batch's transaction): fifty requests sent together by one
browser, or with one API key, queue exactly SD_MAX_QUEUED_PER_OWNER jobs, not as many as
could count before any inserted. No worker runs, so every queued job stays queued.
"""

import threading

import httpx
import pytest

from generator.models import GenerationSession, Status
from tests.conftest import tell_logs_if_failed
from tests.support.processes import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 4
REQUESTS = 50


@pytest.fixture
def capped_server(request, tmp_path, transactional_db):
    server = WebServer(tmp_path, SD_MAX_QUEUED_PER_OWNER=CAP, SD_RATE_LIMIT="")
    yield server
    server.stop()
    tell_logs_if_failed(request, [server])


def post_together(url: str, body: dict, headers: dict, cookies: dict | None = None) -> list:
    """POST `body` REQUESTS times at once (released together by a barrier): the responses."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    barrier = threading.Barrier(REQUESTS)
    responses = [None] * REQUESTS
    with httpx.Client(timeout=120, limits=limits, cookies=cookies) as client:

        def send(index):
            barrier.wait(timeout=60)
            responses[index] = client.post(f"{url}/api/generate", json=body, headers=headers)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(REQUESTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    assert all(response is not None for response in responses), "a request never answered"
    return responses


def assert_refused_by_the_cap(responses) -> None:
    for response in responses:
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"] == "10"
        assert response.headers["Content-Type"] == "application/json"
        assert "(SD_MAX_QUEUED_PER_OWNER)" in response.json()["message"]


def browser_cookies(url: str) -> tuple[dict, str]:
    """One anonymous browser that has queued before (its session holds its owner key,
    ownership.OWNER_KEY), with the CSRF cookie the page sets: (cookies, its owner key)."""
    from importlib import import_module

    from django.conf import settings

    from generator.ownership import OWNER_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[OWNER_KEY] = "one-browser"
    session.create()
    cookies = {settings.SESSION_COOKIE_NAME: session.session_key}
    with httpx.Client(timeout=30, cookies=cookies) as browser:
        assert browser.get(f"{url}/").status_code == 200
        return dict(browser.cookies), "one-browser"


def test_fifty_requests_at_once_from_one_browser_queue_exactly_the_cap(capped_server):
    cookies, owner_key = browser_cookies(capped_server.url)
    headers = {"X-CSRFToken": cookies["csrftoken"]}
    responses = post_together(
        capped_server.url, {"prompt": "a red circle", "steps": 2}, headers, cookies
    )

    accepted = [r for r in responses if r.status_code == 202]
    assert len(accepted) == CAP
    assert_refused_by_the_cap([r for r in responses if r.status_code != 202])
    queued = GenerationSession.objects.all()
    assert sorted(str(s.pk) for s in queued) == sorted(r.json()["session_id"] for r in accepted)
    assert {(s.status, s.owner_id) for s in queued} == {(Status.PENDING, None)}
    assert {s.owner_key for s in queued} == {owner_key}  # the one browser's


@pytest.mark.parametrize(("count", "admitted"), [(1, 4), (2, 2), (3, 1)])
def test_fifty_requests_at_once_with_one_api_key_queue_exactly_the_cap_in_images(
    capped_server, django_user_model, count, admitted
):
    """A request for N images counts as N jobs against the cap, as A1111 counts a batch."""
    from generator.apikeys import issue_key

    tool = django_user_model.objects.create_user("tool", password="x")
    _, key = issue_key(tool)
    body = {"prompt": "a red circle", "steps": 2, "count": count}
    responses = post_together(capped_server.url, body, {"Authorization": f"Bearer {key}"})

    accepted = [r for r in responses if r.status_code == 202]
    assert len(accepted) == admitted
    refused = [r for r in responses if r.status_code != 202]
    assert_refused_by_the_cap(refused)
    assert refused[0].json()["message"].startswith(f"You have {admitted * count} jobs")
    queued = GenerationSession.objects.all()
    assert queued.count() == admitted * count <= CAP
    assert {(s.status, s.owner_id) for s in queued} == {(Status.PENDING, tool.pk)}
