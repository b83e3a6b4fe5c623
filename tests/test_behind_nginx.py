"""Behind a real nginx running docs/deploy.md's own block: each visitor is held by its own
address, not nginx's, and a forged X-Forwarded-For names nobody.

Visitors come from distinct loopback addresses (127.0.0.2, 127.0.0.3: Linux routes all of
127/8 to lo); nginx listens on 127.0.0.1 and connects to the app from it, and the app
trusts that address only (SD_TRUSTED_PROXIES=127.0.0.1). /metrics is kept to 127.0.0.1/32,
so a visitor from 127.0.0.2 stands for one from the internet.
"""

import os
import re

import httpx
import pytest

from tests.support.processes import NGINX_BIN, Nginx, WebServer, visitor

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.any_database,  # the addresses, not the engine, are under test
    pytest.mark.skipif(
        not NGINX_BIN.exists() and os.environ.get("SDSITE_REQUIRE_NGINX") != "1",
        reason=f"nginx is not installed at {NGINX_BIN} (apt-get install -y nginx)",
    ),
]

CAP = 4
JOB = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def site(tmp_path_factory, django_db_setup, django_db_blocker):
    """The app with the documented settings behind nginx with the documented block; no worker,
    so queued jobs stay queued. (app, nginx)"""
    tmp_path = tmp_path_factory.mktemp("behind-nginx")
    with django_db_blocker.unblock():
        app = WebServer(
            tmp_path,
            SD_TRUSTED_PROXIES="127.0.0.1",
            SD_METRICS_ALLOWED="127.0.0.1/32",
            SD_MAX_QUEUED_PER_OWNER=CAP,
        )
    nginx = Nginx(tmp_path, app)
    yield app, nginx
    nginx.stop()
    app.stop()


def queue_one(client: httpx.Client, **headers) -> int:
    """POST a job as the page does (its CSRF cookie and header); the answer's status."""
    if "csrftoken" not in client.cookies:
        client.get("/")
    headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client.post("/api/generate", json=JOB, headers=headers).status_code


def held_by_address() -> dict:
    from collections import Counter

    from generator.models import GenerationSession

    return dict(Counter(GenerationSession.objects.values_list("client_ip", flat=True)))


def test_two_visitors_behind_nginx_have_a_queue_cap_each(site):
    _, nginx = site
    with visitor(nginx.url, "127.0.0.2") as one, visitor(nginx.url, "127.0.0.3") as two:
        assert [queue_one(one) for _ in range(CAP)] == [202] * CAP
        assert queue_one(one) == 429
        assert queue_one(two) == 202  # the first visitor's full queue is not the second's
    assert held_by_address() == {"127.0.0.2": CAP, "127.0.0.3": 1}


def test_a_forged_forwarded_for_with_fresh_cookies_does_not_give_a_fresh_cap(site):
    _, nginx = site
    answers = []
    for number in range(CAP + 4):
        # A new client each time: no cookie, so a new anonymous browser every request.
        with visitor(nginx.url, "127.0.0.2") as flooder:
            answers.append(queue_one(flooder, **{"X-Forwarded-For": f"198.51.100.{number}"}))
    # Passing for nginx itself, or for this machine, names nobody either.
    with visitor(nginx.url, "127.0.0.2") as flooder:
        answers.append(queue_one(flooder, **{"X-Forwarded-For": "127.0.0.1"}))
    assert answers == [202] * CAP + [429] * 5
    assert held_by_address() == {"127.0.0.2": CAP}


@pytest.mark.parametrize("path", ["/metrics", "/api/stats/progress"])
def test_private_routes_refuse_visitors_through_nginx_and_answer_this_machine(site, path):
    app, nginx = site
    with visitor(nginx.url, "127.0.0.2") as outsider:
        assert outsider.get(path).status_code == 403
        assert outsider.get(path, headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403
    with visitor(nginx.url, "127.0.0.1") as local:  # through nginx, from this very address
        assert local.get(path).status_code == 200
    assert httpx.get(f"{app.url}{path}").status_code == 200  # straight to the app


def log_in(client: httpx.Client, password: str) -> httpx.Response:
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/admin/login/?next=/admin/",
        data={"username": "boss", "password": password, "csrfmiddlewaretoken": token},
    )


def test_the_login_throttle_locks_out_the_visitor_that_failed_not_everyone(
    site, django_user_model, settings
):
    _, nginx = site
    django_user_model.objects.create_superuser("boss", "boss@example.com", "right-horse-9")
    with visitor(nginx.url, "127.0.0.2") as guesser:
        answers = [log_in(guesser, "wrong").status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
        assert answers[-1] == 429 and set(answers[:-1]) == {200}
    with visitor(nginx.url, "127.0.0.3") as owner:
        assert log_in(owner, "right-horse-9").status_code == 302
