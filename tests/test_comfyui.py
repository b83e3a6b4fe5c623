"""ComfyUI's API under /comfyui/, against a real web server and worker: Open WebUI's ComfyUI
engine replayed with the `websockets` client (its socket, then /prompt, /history, /view),
SillyTavern's flow (a text/plain body, no client id, /history polled), and the workflows
those clients send (tests/fixtures/comfyui/, each naming the client it comes from)."""

import contextlib
import io
import json
import struct
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from generator.apikeys import issue_key, user_for
from generator.dialects.comfyui_nodes import used_seed
from generator.models import ComfyPrompt, GenerationSession, Status
from generator.params import MAX_SEED
from generator.services import session_delete
from tests.support.processes import Nginx, WebServer, server_and_worker, wait_for

# The prompts, their jobs and the owners' checks go through the database: CI runs this on
# both engines.
pytestmark = pytest.mark.django_db(transaction=True)

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
SEED = 2**53 - 1
"""Number.MAX_SAFE_INTEGER: SillyTavern's random seeds reach it."""


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    """One web server and one worker (a preview at every step) for the module."""
    tmp_path = tmp_path_factory.mktemp("comfyui")
    with server_and_worker(tmp_path, django_db_blocker, SD_PREVIEW_INTERVAL="0") as web:
        yield web


@pytest.fixture
def api_key(server):
    _, key = issue_key(user_for("tool"), "tests")
    return key


def open_webui_workflow(**inputs) -> dict:
    """Open WebUI's default workflow, filled in as its ComfyUI engine fills it."""
    workflow = fixture("open_webui_txt2img.json")["workflow"]
    workflow["4"]["inputs"]["ckpt_name"] = "demo"
    workflow["6"]["inputs"]["text"] = inputs.get("prompt", "a red fox")
    workflow["5"]["inputs"] |= {"width": 64, "height": 64, "batch_size": inputs.get("n", 1)}
    workflow["3"]["inputs"] |= {"steps": inputs.get("steps", 4), "seed": inputs.get("seed", 7)}
    return workflow


def messages_until_done(socket, prompt_id: str) -> tuple[list, list]:
    """What Open WebUI reads: every message until `executing` with node null for its prompt
    (text as JSON, binary frames as bytes)."""
    texts, frames = [], []
    while True:
        message = socket.recv(timeout=120)
        if isinstance(message, bytes):
            frames.append(message)
            continue
        texts.append(json.loads(message))
        data = texts[-1]["data"]
        if texts[-1]["type"] == "executing" and data["node"] is None:
            assert data["prompt_id"] == prompt_id
            return texts, frames


def test_open_webui_s_engine_socket_prompt_history_and_view(server, api_key):
    client_id = str(uuid.uuid4())
    auth = {"Authorization": f"Bearer {api_key}"}
    ws_url = server.url.replace("http://", "ws://") + f"/comfyui/ws?clientId={client_id}"
    with connect(ws_url, additional_headers=auth) as socket:
        hello = json.loads(socket.recv(timeout=10))
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id},
        }
        # Open WebUI's urllib request: the JSON body with no Content-Type of its own.
        body = json.dumps({"prompt": open_webui_workflow(seed=SEED, n=2), "client_id": client_id})
        answer = httpx.post(f"{server.url}/comfyui/prompt", content=body.encode(), headers=auth)
        assert answer.status_code == 200, answer.text
        queued = answer.json()
        assert queued["node_errors"] == {} and isinstance(queued["number"], int)
        prompt_id = queued["prompt_id"]
        texts, frames = messages_until_done(socket, prompt_id)

    kinds = [(m["type"], m["data"].get("node")) for m in texts if m["type"] != "progress"]
    assert kinds == [
        ("status", None), ("execution_start", None), ("execution_cached", None),
        ("executing", "4"), ("executing", "6"), ("executing", "7"), ("executing", "5"),
        ("executing", "3"), ("executing", "8"), ("executing", "9"), ("executed", "9"),
        ("execution_success", None), ("executing", None),
    ]  # fmt: skip
    assert texts[0]["data"] == {"status": {"exec_info": {"queue_remaining": 1}}}
    progress = [m["data"] for m in texts if m["type"] == "progress"]
    assert [p["value"] for p in progress] == sorted({p["value"] for p in progress})
    assert progress[-1]["value"] == progress[-1]["max"] == 8  # 4 steps of each of 2 jobs
    assert {(p["node"], p["prompt_id"]) for p in progress} == {("3", prompt_id)}
    # The last progress comes before the sampler's successors run, before `node: null`.
    last = max(i for i, m in enumerate(texts) if m["type"] == "progress")
    assert texts[last + 1] == {
        "type": "executing", "data": {"node": "8", "display_node": "8", "prompt_id": prompt_id},
    }  # fmt: skip
    assert frames, "a preview frame at every step (SD_PREVIEW_INTERVAL=0)"
    for frame in frames:
        assert struct.unpack(">II", frame[:8]) == (1, 1)  # a preview, as JPEG
        assert frame[8:11] == b"\xff\xd8\xff"
    executed = next(m["data"] for m in texts if m["type"] == "executed")

    history = httpx.get(f"{server.url}/comfyui/history/{prompt_id}", headers=auth).json()
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success",
    ]  # fmt: skip
    assert entry["prompt"][:2] == [queued["number"], prompt_id]
    assert entry["prompt"][2]["3"]["inputs"]["seed"] == used_seed(SEED)  # the seed used
    images = entry["outputs"]["9"]["images"]
    assert images == executed["output"]["images"] and len(images) == 2
    assert images[0]["type"] == "output" and not images[0]["subfolder"].startswith("/")
    # Open WebUI builds /view's query with urlencode and fetches it with its key.
    for n, image_entry in enumerate(images):
        image = httpx.get(f"{server.url}/comfyui/view", params=image_entry, headers=auth)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(image.content)) as png:
            assert png.size == (64, 64)
            assert f"Seed: {(used_seed(SEED) + n) % (MAX_SEED + 1)}," in png.text["parameters"]
    sessions = GenerationSession.objects.order_by("created_at")
    assert [s.seed for s in sessions] == [MAX_SEED, 0]  # 2**53 - 1 is MAX_SEED modulo 2**32
    assert {s.owner.username for s in sessions} == {"tool"}
    session = sessions[0]
    assert (session.scheduler, session.guidance_scale, session.steps) == ("Euler", 8.0, 4)
    # Another key's user sees neither the entry nor the image.
    _, other = issue_key(user_for("someone else"), "tests")
    stranger = {"Authorization": f"Bearer {other}"}
    assert httpx.get(f"{server.url}/comfyui/history/{prompt_id}", headers=stranger).json() == {}
    refused = httpx.get(f"{server.url}/comfyui/view", params=images[0], headers=stranger)
    assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"


def sillytavern_workflow(seed: int) -> str:
    """SillyTavern's default workflow with its placeholders replaced as it replaces them."""
    text = fixture("sillytavern_default.json")["workflow_template"]
    values = {
        "prompt": "a blue circle", "negative_prompt": "blurry", "model": "demo",
        "sampler": "euler_ancestral", "scheduler": "normal", "steps": 3, "scale": 7,
        "width": 64, "height": 64, "denoise": 1, "seed": seed,
    }  # fmt: skip
    for name, value in values.items():
        text = text.replace(f'"%{name}%"', json.dumps(value))
    return f'{{"prompt": {text}}}'


def test_sillytavern_s_flow_with_auth_off(server, tmp_path):
    """Its server posts text/plain with no client_id and no key, polls /history, then
    fetches /view with the query written unencoded."""
    open_server = WebServer(tmp_path, SD_API_AUTH="off")
    try:
        url = f"{open_server.url}/comfyui"
        info = httpx.get(f"{url}/object_info").json()
        # What SillyTavern lists (it fails without the UNET and VAE lists).
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["demo"]
        assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == []
        assert info["VAELoader"]["input"]["required"]["vae_name"][0] == []
        assert "euler_ancestral" in info["KSampler"]["input"]["required"]["sampler_name"][0]
        assert "karras" in info["KSampler"]["input"]["required"]["scheduler"][0]
        assert httpx.get(f"{url}/system_stats").json()["devices"][0]["type"] == "cpu"
        answer = httpx.post(
            f"{url}/prompt", content=sillytavern_workflow(SEED),
            headers={"Content-Type": "text/plain;charset=UTF-8"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        assert httpx.get(f"{url}/history").json().get(prompt_id) is None  # not finished yet
        item = wait_for(
            lambda: httpx.get(f"{url}/history").json().get(prompt_id),
            timeout=120, message="the prompt in /history",
        )  # fmt: skip
        assert item["status"]["status_str"] == "success"
        image = [node["images"] for node in item["outputs"].values()][0][0]
        query = f"?filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}"
        fetched = httpx.get(f"{url}/view{query}")
        assert fetched.status_code == 200
        assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
        session = GenerationSession.objects.get()
        assert session.owner is None and session.seed == used_seed(SEED)
        assert (session.scheduler, session.schedule_type) == ("Euler a", "Automatic")
        assert (session.prompt, session.negative_prompt) == ("a blue circle", "blurry")
        # The socket opens without a key too, with a client id of its own when none is given.
        ws_url = url.replace("http://", "ws://") + "/ws"
        with connect(ws_url, origin=f"http://127.0.0.1:{open_server.port}") as socket:
            hello = json.loads(socket.recv(timeout=10))
            assert hello["type"] == "status" and len(hello["data"]["sid"]) == 32
    finally:
        open_server.stop()


def test_img2img_with_a_lora_from_an_uploaded_image(server, api_key):
    auth = {"Authorization": f"Bearer {api_key}"}
    url = f"{server.url}/comfyui"
    start = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(start, format="PNG")
    uploaded = httpx.post(
        f"{url}/upload/image", files={"image": ("start.png", start.getvalue(), "image/png")},
        data={"overwrite": "true"}, headers=auth,
    )  # fmt: skip
    assert uploaded.json() == {"name": "start.png", "subfolder": "", "type": "input"}
    listed = httpx.get(f"{url}/object_info/LoadImage", headers=auth).json()
    assert listed["LoadImage"]["input"]["required"]["image"][0] == ["start.png"]
    refused = httpx.post(
        f"{url}/upload/image", files={"image": ("x.png", b"not an image", "image/png")},
        headers=auth,
    )  # fmt: skip
    assert refused.status_code == 400 and "Not an image" in refused.json()["error"]["message"]

    workflow = fixture("img2img_lora.json")["workflow"]
    workflow["2"]["inputs"]["image"] = "start.png"
    # Posted with no client_id: the owner's sockets follow it all the same (ComfyUI sends
    # such prompts to every socket).
    ws_url = url.replace("http://", "ws://") + "/ws?clientId=any"
    with connect(ws_url, additional_headers=auth) as socket:
        socket.recv(timeout=10)  # status
        # Newer ComfyUI takes the client's own prompt_id; once only.
        body = {"prompt": workflow, "prompt_id": str(uuid.uuid4())}
        answer = httpx.post(f"{url}/prompt", json=body, headers=auth)
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        assert prompt_id == body["prompt_id"]
        again = httpx.post(f"{url}/prompt", json=body, headers=auth)
        assert again.status_code == 400 and again.json()["error"]["extra_info"] == {
            "field": "prompt_id"
        }
        texts, _ = messages_until_done(socket, prompt_id)
    executing = [m["data"]["node"] for m in texts if m["type"] == "executing"]
    assert executing == ["1", "10", "6", "7", "2", "3", "4", "8", "9", None]
    progress = [m["data"] for m in texts if m["type"] == "progress"]
    assert progress[-1]["value"] == progress[-1]["max"] == 2  # 0.5 of 4 steps
    item = httpx.get(f"{url}/history/{prompt_id}", headers=auth).json()[prompt_id]
    assert item["status"]["status_str"] == "success", item["status"]
    executed = next(m["data"] for m in texts if m["type"] == "executed")
    assert executed["output"]["images"] == item["outputs"]["9"]["images"]
    session = GenerationSession.objects.get()
    assert session.prompt == "a circle <lora:demo-swap:1>"
    assert (session.strength, session.total_steps, session.init_image.name != "") == (0.5, 2, True)
    assert (session.scheduler, session.schedule_type) == ("DPM++ 2M", "Karras")
    assert (session.width, session.height) == (64, 64)


def test_workflows_sdsite_cannot_run_are_refused_naming_the_node(server, api_key):
    auth = {"Authorization": f"Bearer {api_key}"}
    url = f"{server.url}/comfyui/prompt"
    workflow = open_webui_workflow()
    workflow["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x.pth"}}
    refused = httpx.post(url, json={"prompt": workflow}, headers=auth)
    assert refused.status_code == 400
    body = refused.json()
    assert body["error"]["type"] == "invalid_prompt"
    assert "UpscaleModelLoader" in body["error"]["message"]
    assert body["node_errors"]["10"]["class_type"] == "UpscaleModelLoader"

    too_wide = open_webui_workflow()
    too_wide["5"]["inputs"]["width"] = 65
    body = httpx.post(url, json={"prompt": too_wide}, headers=auth).json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    error = body["node_errors"]["5"]
    assert error["class_type"] == "EmptyLatentImage"
    assert error["errors"][0]["extra_info"] == {"input_name": "width"}
    assert "multiple of 8" in error["errors"][0]["details"]

    unknown_sampler = open_webui_workflow()
    unknown_sampler["3"]["inputs"]["sampler_name"] = "dpmpp_sde_gpu"
    body = httpx.post(url, json={"prompt": unknown_sampler}, headers=auth).json()
    assert body["node_errors"]["3"]["errors"][0]["extra_info"] == {"input_name": "sampler_name"}
    assert httpx.post(url, content=b"{", headers=auth).status_code == 400
    assert httpx.post(url, json={}, headers=auth).json()["error"]["type"] == "no_prompt"
    assert not GenerationSession.objects.exists() and not ComfyPrompt.objects.exists()


def test_a_key_is_required_on_every_route_and_the_socket(server):
    for method, path in [("POST", "/prompt"), ("GET", "/object_info"), ("GET", "/history"),
                         ("GET", "/queue"), ("GET", "/system_stats")]:  # fmt: skip
        response = httpx.request(method, f"{server.url}/comfyui{path}", json={})
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "unauthorized"
    ws_url = server.url.replace("http://", "ws://") + "/comfyui/ws?clientId=x"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, additional_headers=headers).close()
        assert refused.value.response.status_code == 401
    # Another site's page may not open it (with SD_API_AUTH=off no key would stop it).
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin="http://evil.example").close()
    assert refused.value.response.status_code == 403
    # Unknown routes under the prefix answer ComfyUI's JSON too; other sockets are refused.
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url.replace("http://", "ws://") + "/api/ws").close()
    assert refused.value.response.status_code == 403
    missing = httpx.get(f"{server.url}/comfyui/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]


@contextlib.contextmanager
def a_long_prompt(server, api_key: str, client_id: str):
    """A socket for `client_id`, and a 150-step prompt posted for it, read up to its first
    step: (socket, the API's URL, the headers, the prompt_id)."""
    auth = {"Authorization": f"Bearer {api_key}"}
    url = f"{server.url}/comfyui"
    ws_url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    with connect(ws_url, additional_headers=auth) as socket:
        socket.recv(timeout=10)  # status
        workflow = open_webui_workflow(steps=150)
        workflow["5"]["inputs"] |= {"width": 128, "height": 128}
        body = {"prompt": workflow, "client_id": client_id}
        prompt_id = httpx.post(f"{url}/prompt", json=body, headers=auth).json()["prompt_id"]
        while not (isinstance(m := socket.recv(timeout=60), str) and '"progress"' in m):
            pass
        yield socket, url, auth, prompt_id


def test_queue_and_interrupt_over_the_socket(server, api_key):
    with a_long_prompt(server, api_key, "stopper") as (socket, url, auth, prompt_id):
        running = httpx.get(f"{url}/queue", headers=auth).json()
        assert running["queue_pending"] == []
        assert running["queue_running"][0][1:2] == [prompt_id]
        assert running["queue_running"][0][3:] == [{"client_id": "stopper"}, ["9"]]
        assert httpx.post(f"{url}/interrupt", headers=auth).status_code == 200
        texts, _ = messages_until_done(socket, prompt_id)
    assert [m["type"] for m in texts][-2:] == ["execution_interrupted", "executing"]
    assert texts[-2]["data"]["node_id"] == "3"
    item = httpx.get(f"{url}/history/{prompt_id}", headers=auth).json()[prompt_id]
    assert item["status"]["status_str"] == "error" and not item["status"]["completed"]
    assert item["status"]["messages"][-1][0] == "execution_interrupted"
    assert item["outputs"] == {}
    assert GenerationSession.objects.get().status == Status.CANCELLED
    assert httpx.get(f"{url}/queue", headers=auth).json() == {
        "queue_running": [], "queue_pending": [],
    }  # fmt: skip


def test_a_job_deleted_while_it_runs_ends_its_prompt_with_execution_error(server, api_key):
    with a_long_prompt(server, api_key, "deleter") as (socket, url, auth, prompt_id):
        session_delete(GenerationSession.objects.get())  # as the admin's delete action does
        texts, _ = messages_until_done(socket, prompt_id)
    error = texts[-2]
    assert error["type"] == "execution_error"
    assert error["data"]["exception_message"] == "The session was deleted."
    assert (error["data"]["node_id"], error["data"]["node_type"]) == ("3", "KSampler")
    # The prompt goes with its job.
    assert httpx.get(f"{url}/history/{prompt_id}", headers=auth).json() == {}
    assert not ComfyPrompt.objects.exists()


def test_the_socket_through_the_documented_nginx_block(server, api_key, tmp_path):
    nginx = Nginx(tmp_path, server)
    try:
        url = nginx.url.replace("http://", "ws://") + "/comfyui/ws?clientId=abc"
        with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as socket:
            hello = json.loads(socket.recv(timeout=10))
        assert hello["data"]["sid"] == "abc"
    finally:
        nginx.stop()
