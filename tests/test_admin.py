"""The admin as the job history: thumbnails, filters, the step chart and the actions."""

import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from generator.models import GenerationSession, Status

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db, pytest.mark.any_database]

CHANGELIST = "/admin/generator/generationsession/"


def finished(make_session, status=Status.COMPLETED, **fields):
    session = make_session()
    image = default_storage.save(f"images/{session.pk}.png", ContentFile(b"png"))
    GenerationSession.objects.filter(pk=session.pk).update(
        status=status, image=image, step_seconds=[0.12, 0.1, 0.11], **fields
    )
    session.refresh_from_db()
    return session


def test_the_list_shows_thumbnails_and_offers_the_filters(admin_client, make_session):
    session = finished(make_session)
    page = admin_client.get(CHANGELIST).content.decode()
    assert f'<img src="{session.image.url}"' in page
    for parameter in ("status__exact", "backend__exact", "model", "created_at__gte"):
        assert parameter in page
    failed = admin_client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    assert session.image.url not in failed
    found = admin_client.get(CHANGELIST, {"q": "lighthouse"}).content.decode()
    assert session.image.url in found


def test_the_detail_page_has_the_image_parameters_and_step_chart(admin_client, make_session):
    session = finished(make_session)
    page = admin_client.get(f"{CHANGELIST}{session.pk}/change/").content.decode()
    assert page.count("<rect ") == 3  # one bar per step
    assert "3 steps, median 110 ms" in page
    assert "Steps: 4, Sampler: Euler" in page  # the A1111 parameters
    # Worker-owned state is read-only: the page has no form to change it.
    response = admin_client.post(f"{CHANGELIST}{session.pk}/change/", {"status": "pending"})
    assert response.status_code == 403


def test_the_detail_page_shows_the_label_of_each_choice_kept_in_the_parameters_json(
    admin_client, make_session
):
    session = finished(
        make_session,
        parameters={"scheduler": "DPM++ 2M Karras", "resize_mode": "crop and resize",
                    "inpainting_fill": "latent noise", "steps": 4},
    )  # fmt: skip
    page = admin_client.get(f"{CHANGELIST}{session.pk}/change/").content.decode()
    for label, shown in (
        ("Sampler", "DPM++ 2M Karras"),
        ("Resize mode", "Crop and resize"),
        ("Masked content", "Latent noise"),
        ("Schedule type", "Automatic"),  # absent from the JSON: the spec's default
    ):
        assert re.search(
            rf"<label>{label}:</label>\s*<div class=\"readonly\">{re.escape(shown)}</div>", page
        ), label
    assert "crop and resize" not in page


def test_cancel_and_requeue_actions(admin_client, make_session):
    pending = make_session()
    failed = finished(make_session, status=Status.FAILED, error="boom", attempts=2)

    admin_client.post(CHANGELIST, {"action": "cancel_sessions", "_selected_action": [pending.pk]})
    admin_client.post(CHANGELIST, {"action": "requeue_sessions", "_selected_action": [failed.pk]})

    pending.refresh_from_db()
    failed.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert (failed.status, failed.error, failed.attempts, failed.step_seconds) == (
        Status.PENDING,
        "",
        0,
        [],
    )


def test_deleting_in_the_admin_removes_the_files(
    admin_client, make_session, django_capture_on_commit_callbacks
):
    session = finished(make_session)
    name = session.image.name
    with django_capture_on_commit_callbacks(execute=True):  # files go once the delete commits
        response = admin_client.post(
            CHANGELIST,
            {"action": "delete_selected", "_selected_action": [session.pk], "post": "yes"},
        )
    assert response.status_code == 302
    assert not GenerationSession.objects.filter(pk=session.pk).exists()
    assert not default_storage.exists(name)


def test_a_finished_job_shows_no_eta_and_times_read_as_dates(admin_client, make_session):
    session = finished(make_session, eta_seconds=19.0, step_recorded_at=1_764_000_000.5)
    page = admin_client.get(f"{CHANGELIST}{session.pk}/change/").content.decode()
    assert "19.0 s" not in page  # the estimate meant something only while it ran
    assert "2025-11-24 16:00:00" in page and "1764000000" not in page


def test_action_messages_are_grammatical(admin_client, make_session):
    done = finished(make_session)
    failed = finished(make_session, status=Status.FAILED)
    response = admin_client.post(
        CHANGELIST,
        {"action": "requeue_sessions", "_selected_action": [done.pk, failed.pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "Re-queued 1 generation." in text
    assert "1 was not failed or cancelled, so it stays as it is." in text


def test_api_keys_are_listed_and_revoked_in_the_admin(admin_client):
    from generator.apikeys import issue_key, user_for

    row, _ = issue_key(user_for("tool"), "open webui")
    page = admin_client.get("/admin/generator/apikey/").content.decode()
    assert row.prefix in page and "open webui" in page
    admin_client.post(
        "/admin/generator/apikey/", {"action": "revoke_keys", "_selected_action": [row.pk]}
    )
    row.refresh_from_db()
    assert row.revoked_at is not None
