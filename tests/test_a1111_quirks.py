"""What older and newer A1111 clients rely on: `sampler_index`, the `info` string, options,
cmd-flags, progress without its image, skip, send_images, and the anonymous mode for a
trusted network. webuiapi where it has the call, httpx with the clients' bodies elsewhere."""

import json
import threading

import httpx
import pytest
import webuiapi

from generator.apikeys import issue_key, user_for
from generator.models import GenerationSession, Status
from tests.step_gate import gated_worker_env, phase_key, step_key
from tests.support.processes import WebServer, WorkerProcess, wait_for

# Jobs are queued, waited on and cancelled through the database: CI runs it on both engines.
pytestmark = pytest.mark.django_db(transaction=True)

# The keys of A1111's `info` (modules/processing.py, Processed.js()).
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds",
    "subseed", "all_subseeds", "subseed_strength", "width", "height", "sampler_name",
    "cfg_scale", "steps", "batch_size", "restore_faces", "face_restoration_model",
    "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
    "is_using_inpainting_conditioning", "version",
}  # fmt: skip


HELD_STEP = 3
"""The step the module's gated worker holds every job at until the test lets it pass
(tests/step_gate.py); every other step and phase passes at once."""
GATE = "gate"


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    tmp_path = tmp_path_factory.mktemp("a1111")
    gate = tmp_path / GATE
    phases = ("starting", "loading model", "denoising", "decoding", "saving")
    passing = [phase_key(p) for p in phases] + [step_key(s) for s in range(1, 100)]
    gate.write_text("".join(f"{key}\n" for key in passing if key != step_key(HELD_STEP)))
    with django_db_blocker.unblock():
        web = WebServer(tmp_path)
        worker = WorkerProcess(tmp_path, **gated_worker_env(gate, SD_STEP_WRITE_INTERVAL=0))
    web.gate = gate
    yield web
    worker.stop()
    web.stop()


@pytest.fixture
def key(server):
    return issue_key(user_for("tool"), "tests")[1]


@pytest.fixture
def a1111(server, key):
    port = int(server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, username="tool", password=key)


def post(server, key, path, body, **options):
    return httpx.post(
        f"{server.url}/sdapi/v1/{path}", json=body, headers={"Authorization": f"Bearer {key}"},
        timeout=180, **options,
    )  # fmt: skip


def test_sampler_index_alone_and_info_as_a1111_returns_it_without_images(server, key):
    body = {"prompt": "a fox", "sampler_index": "DPM++ 2M", "steps": 2, "width": 64,
            "height": 64, "seed": 3, "batch_size": 2, "send_images": False,
            "save_images": True}  # fmt: skip
    response = post(server, key, "txt2img", body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["images"] == []  # send_images: false
    info = json.loads(answer["info"])  # a JSON string, as A1111's
    assert set(info) >= A1111_INFO_KEYS
    assert (info["seed"], info["all_seeds"], info["subseed"], info["all_subseeds"]) == (
        3, [3, 4], -1, [-1, -1]
    )  # fmt: skip
    assert info["all_prompts"] == ["a fox", "a fox"] and info["sampler_name"] == "DPM++ 2M"
    assert len(info["infotexts"]) == 2 and "Sampler: DPM++ 2M" in info["infotexts"][0]
    assert "Seed: 4" in info["infotexts"][1]
    done = GenerationSession.objects.filter(status=Status.COMPLETED)
    assert done.count() == 2 and all(session.image for session in done)  # in the history

    refused = post(server, key, "txt2img", {"prompt": "x", "sampler_index": "Nope"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "sampler_index"]


def test_options_answer_the_keys_clients_read_and_take_what_they_set(a1111):
    options = a1111.get_options()
    assert options["sd_model_checkpoint"] == "demo"
    assert (options["sd_vae"], options["CLIP_stop_at_last_layers"]) == ("Automatic", 1)
    assert options["samples_format"] == "png"
    # As SillyTavern and Open WebUI set them; a key A1111 does not know is taken too.
    a1111.set_options({"CLIP_stop_at_last_layers": 2, "samples_format": "jpg", "sd_vae": "None",
                       "no_such_setting": 1, "sd_model_checkpoint": "demo"})  # fmt: skip
    assert a1111.get_options()["sd_model_checkpoint"] == "demo"

    flags = a1111.get_cmd_flags()
    assert flags["api"] is True and flags["nowebui"] is True
    assert flags["ckpt_dir"] is None and flags["lora_dir"] is None  # no server paths


def test_skip_ends_the_current_image_and_the_batch_goes_on(a1111, server, key):
    results = []
    call = threading.Thread(
        target=lambda: results.append(
            a1111.txt2img(prompt="a fox", steps=6, width=64, height=64, seed=1, batch_size=2)
        )
    )  # fmt: skip
    call.start()
    headers = {"Authorization": f"Bearer {key}"}

    def running():
        response = httpx.get(
            f"{server.url}/sdapi/v1/progress", params={"skip_current_image": "true"},
            headers=headers,
        )  # fmt: skip
        progress = response.json()
        return progress["state"]["sampling_step"] == HELD_STEP and progress

    progress = wait_for(running, timeout=120, message="the first image held at its step")
    assert progress["current_image"] is None  # skip_current_image=true
    assert progress["state"]["job_count"] == 2
    first = progress["state"]["job"]

    a1111.skip()
    with server.gate.open("a") as gate:  # let the jobs past the held step
        gate.write(step_key(HELD_STEP) + "\n")
    call.join(timeout=240)

    assert not call.is_alive()
    assert len(results[0].images) == 1  # the second image was made
    assert GenerationSession.objects.get(pk=first).status == Status.CANCELLED
    assert GenerationSession.objects.exclude(pk=first).get().status == Status.COMPLETED


def test_auth_off_opens_the_api_only_to_the_listed_addresses(tmp_path):
    server = WebServer(
        tmp_path, SD_API_AUTH="off", SD_API_ANONYMOUS_FROM="10.0.0.0/8",
        SD_TRUSTED_PROXIES="127.0.0.1",
    )  # fmt: skip
    try:
        _, key = issue_key(user_for("tool"), "tests")
        mcp = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
        accept = {"Accept": "application/json, text/event-stream"}

        def status(path, **headers):
            if path == "/mcp":  # the first loads the MCP SDK: seconds on a busy machine
                return httpx.post(
                    f"{server.url}{path}", json=mcp, headers=accept | headers, timeout=60
                )
            return httpx.get(f"{server.url}{path}", headers=headers, timeout=60)

        for path in ("/sdapi/v1/options", "/v1/models", "/mcp"):
            # 127.0.0.1 is not listed: a key is still needed.
            assert status(path).status_code == 401, path
            assert status(path, Authorization=f"Bearer {key}").status_code == 200, path
            # A client in 10.0.0.0/8 behind the trusted proxy needs none.
            assert status(path, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 200, path
            forged = {"X-Forwarded-For": "10.1.2.3, 192.0.2.7"}  # the proxy saw 192.0.2.7
            assert status(path, **forged).status_code == 401, path
    finally:
        server.stop()
