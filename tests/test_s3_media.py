"""Media in an S3 bucket: a web and a worker on separate data folders share only the
database, the bucket (moto's real S3 server on loopback, no mock of boto3) and SECRET_KEY.

Unmarked: CI runs it on PostgreSQL too (here the SQLite file stands in for the shared
database).
"""

import base64
import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.template.defaultfilters import filesizeformat
from PIL import Image

from generator.models import SiteRecord
from tests.support.processes import ROOT, WebServer, process_env, wait_for
from tests.support.s3 import CREDENTIALS, S3Server

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3-test-shared-secret-key-" + "x" * 30
UNAVAILABLE = "media storage (S3) unavailable: cannot connect to the endpoint"


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    if server.running:
        server.stop()


@pytest.fixture
def s3(s3_server):
    """The session's S3 server, running at the start and the end of each test."""
    yield s3_server
    if not s3_server.running:
        s3_server.start()


def machine(s3, tmp_path: Path, name: str, prefix: str, **env) -> dict:
    """The settings of one machine: its own DATA_DIR, the shared bucket and SECRET_KEY."""
    data_dir = tmp_path / name
    data_dir.mkdir()
    return {**s3.env(prefix), "DATA_DIR": data_dir, "SECRET_KEY": SECRET, **env}


def browser(web) -> httpx.Client:
    client = httpx.Client(base_url=web.url, timeout=60)
    client.get("/")
    client.headers.update({"X-CSRFToken": client.cookies["csrftoken"], "Referer": web.url + "/"})
    return client


def png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def finished(client, session_id: int, timeout: float = 120) -> dict:
    def ended():
        session = client.get(f"/api/sessions/{session_id}").json()
        return session if session["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(ended, timeout=timeout, message=f"session {session_id} to end")


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def manage(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_input_uploaded_to_the_web_reaches_a_worker_on_another_machine_through_the_bucket(
    s3, tmp_path, start_worker, request
):
    web_env = machine(s3, tmp_path, "web", "shared", SD_PRIVATE_MEDIA=1)
    worker_env = machine(s3, tmp_path, "worker", "shared")
    web = WebServer(tmp_path, **web_env)
    request.addfinalizer(web.stop)
    start_worker(**worker_env)
    owner, stranger = browser(web), browser(web)
    recorded = SiteRecord.objects.get(key="media").value  # by the web, at its start
    assert {k: recorded[k] for k in ("storage", "bucket", "prefix")} == {
        "storage": "s3",
        "bucket": s3.bucket,
        "prefix": "shared",
    }

    queued = owner.post(
        "/api/generate",
        data={"prompt": "a fox", "steps": 4, "strength": 0.5, "seed": 5},
        files={"init_image": ("in.png", png(), "image/png")},
    )
    assert queued.status_code == 202, queued.text
    inputs = [key for key in s3.objects("shared") if key.startswith("shared/inputs/")]
    assert len(inputs) == 1  # stored by the web, in the bucket

    session = finished(owner, queued.json()["session_id"])
    assert session["status"] == "completed", session["error"]
    address = session["image_url"]
    assert address.startswith("/media/images/") and "?" not in address  # never a signed URL

    redirect = owner.get(address)
    assert redirect.status_code == 302
    signed = redirect.headers["location"]
    assert signed.startswith(f"{s3.url}/{s3.bucket}/shared/images/") and "X-Amz-Signature" in signed
    image = httpx.get(signed)
    assert image.status_code == 200
    assert image.content == s3.read("shared/" + address.removeprefix("/media/"))
    with Image.open(io.BytesIO(image.content)) as drawn:
        assert drawn.size == (64, 64)  # the input's size: the worker read the uploaded input
        assert "Denoising strength: 0.5" in drawn.info["parameters"]
    assert stranger.get(address).status_code == 404  # another owner is refused, as on disk
    # Nothing was kept on either machine's disk.
    assert files_under(tmp_path / "web" / "media") == []
    assert files_under(tmp_path / "worker" / "media") == []

    # Retention, from a third machine: the job's objects go, and prune says how much.
    kept = s3.objects("shared")
    assert len(kept) >= 2  # the input and the image (and its last preview, if any)
    pruned = manage(machine(s3, tmp_path, "ops", "shared"), "prune", "--older-than", "0m")
    assert pruned.returncode == 0, pruned.stderr
    assert f"Deleted 1 sessions, {filesizeformat(sum(kept.values()))} of files." in pruned.stdout
    assert s3.objects("shared") == {}
    assert owner.get(address).status_code == 404


def test_the_bucket_away_fails_the_job_readably_refuses_uploads_and_comes_back(
    s3, tmp_path, start_worker, request
):
    web_env = machine(s3, tmp_path, "web", "outage", SD_API_AUTH="off")
    worker_env = machine(
        s3, tmp_path, "worker", "outage", SD_MEDIA_RETRY_SECONDS=4, SD_PREVIEW_INTERVAL=0
    )
    web = WebServer(tmp_path, **web_env)
    request.addfinalizer(web.stop)
    worker = start_worker(**worker_env)
    client = browser(web)
    wait_for(lambda: client.get("/readyz").json() == {"ready": True}, message="ready")

    s3.stop()
    queued = client.post(
        "/api/generate", json={"prompt": "a fox", "steps": 3, "width": 64, "height": 64}
    )
    assert queued.status_code == 202  # nothing stored yet: the worker saves its image
    session = finished(client, queued.json()["session_id"])
    assert (session["status"], session["error"]) == ("failed", UNAVAILABLE)
    assert session["current_step"] == 3  # the previews it could not write were skipped
    assert "Could not write the preview" in worker.log()
    assert "trying again in" in worker.log()  # the image's save was retried with back-off
    assert session["preview_url"] is None

    upload = client.post(
        "/api/generate",
        data={"prompt": "a fox", "strength": 0.5},
        files={"init_image": ("in.png", png(), "image/png")},
    )
    assert upload.status_code == 503
    assert upload.headers["retry-after"] == "5"
    assert upload.json()["message"] == f"{UNAVAILABLE}: try again in a few seconds."
    a1111 = client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "a fox", "init_images": [base64.b64encode(png()).decode()]},
    )
    assert (a1111.status_code, a1111.headers["retry-after"]) == (503, "5")
    assert a1111.json()["detail"] == f"{UNAVAILABLE}: try again in a few seconds."
    ready = wait_for(lambda: client.get("/readyz").status_code == 503 and client.get("/readyz"))
    assert ready.json() == {"ready": False, "reason": UNAVAILABLE}

    s3.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, message="ready")
    # An upload again, through A1111's API, which answers the image's bytes, as on disk.
    drawn = client.post(
        "/sdapi/v1/img2img",
        json={
            "prompt": "a fox",
            "steps": 4,
            "denoising_strength": 0.5,
            "init_images": [base64.b64encode(png()).decode()],
        },
        timeout=180,
    )
    assert drawn.status_code == 200, drawn.text
    images = [key for key in s3.objects("outage") if key.startswith("outage/images/")]
    assert len(images) == 1
    assert base64.b64decode(drawn.json()["images"][0]) == s3.read(images[0])


@pytest.fixture
def in_bucket(s3, settings, monkeypatch):
    """This process's media in the bucket under the prefix "local-test" (a web's settings)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    env = s3.env("local-test")
    settings.SD_MEDIA_STORAGE, settings.SD_S3_BUCKET = "s3", env["SD_S3_BUCKET"]
    settings.SD_S3_PREFIX, settings.SD_S3_ENDPOINT_URL = "local-test", env["SD_S3_ENDPOINT_URL"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "generator.s3_storage.MediaS3Storage",
            "OPTIONS": {"bucket_name": s3.bucket, "endpoint_url": s3.url, "location": "local-test"},
        },
    }
    yield s3
    if not s3.running:
        s3.start()
    for key in s3.objects("local-test"):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)


def test_prune_orphans_and_the_quota_count_only_the_objects_under_the_sites_prefix(
    in_bucket, make_session, monkeypatch
):
    from generator import disk, retention
    from generator.files import save_whole
    from generator.models import GenerationSession

    kept = make_session()
    name = save_whole("images/kept.png", b"kept")
    GenerationSession.objects.filter(pk=kept.pk).update(image=name)
    save_whole("previews/orphan.jpg", b"left by a crash")
    in_bucket.client.put_object(Bucket=in_bucket.bucket, Key="other-site/images/x.png", Body=b"x")
    assert disk.media_bytes() == len(b"kept") + len(b"left by a crash")

    monkeypatch.setattr(retention, "ORPHAN_MIN_AGE", 0.0)  # every file is old enough
    out = io.StringIO()
    call_command("prune", "--orphans", stdout=out)

    assert out.getvalue() == "Deleted 1 orphaned files, 15\xa0bytes.\n"
    assert list(in_bucket.objects("local-test")) == ["local-test/images/kept.png"]
    assert list(in_bucket.objects("other-site")) == ["other-site/images/x.png"]
    in_bucket.client.delete_object(Bucket=in_bucket.bucket, Key="other-site/images/x.png")


def test_the_storage_away_is_told_in_a_few_words_and_a_read_of_a_missing_file_is_not_found(
    in_bucket,
):
    from django.core.files.storage import default_storage

    from generator import disk
    from generator.media_storage import StorageUnavailable, listing, storage_problem

    with pytest.raises(FileNotFoundError):
        default_storage.open("images/none.png")
    assert default_storage.url("images/a.png") == "/media/images/a.png"  # never signed
    default_storage.save("images/b.png", io.BytesIO(b"bb"))
    disk.forget_media_usage()
    assert disk.media_usage() == 2
    in_bucket.stop()
    with pytest.raises(StorageUnavailable) as away:
        default_storage.save("images/a.png", io.BytesIO(b"a"))
    assert str(away.value) == UNAVAILABLE
    assert storage_problem() == UNAVAILABLE
    with pytest.raises(StorageUnavailable):
        list(listing())
    disk.forget_media_usage()
    assert disk.media_usage() == 2  # the last size known, never an error on a POST


def test_a_worker_whose_media_settings_disagree_with_the_webs_refuses_to_start(
    s3, tmp_path, settings
):
    from generator.media_storage import record_site_settings

    # What a web process with these settings records at its start (sdsite/asgi.py).
    settings.SD_MEDIA_STORAGE, settings.SD_S3_BUCKET, settings.SD_S3_PREFIX = (
        "s3",
        s3.bucket,
        "site",
    )
    settings.SECRET_KEY = SECRET
    record_site_settings()
    other_bucket = machine(s3, tmp_path, "worker", "elsewhere", SECRET_KEY="another-" + "k" * 40)

    started = manage(other_bucket, "runworker", "--once")

    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        "CommandError: This worker's media settings disagree with the web's: "
        "SD_S3_PREFIX='elsewhere' here, 'site' on the web; SECRET_KEY differs from the web's. "
        "Set them the same on every machine (docs/deploy.md)."
    ]
