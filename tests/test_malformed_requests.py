"""Malformed requests to every route of the APIs (sdsite's, A1111's, OpenAI's, ComfyUI's), sent
over real HTTP to a real uvicorn server: each is a 4xx JSON body in that API's own error shape
naming the field at fault, never a 5xx, never HTML, and never a job."""

import json
import uuid
from pathlib import Path

import httpx
import pytest

from generator.apikeys import issue_key, user_for
from generator.models import GenerationSession
from tests.support.processes import WebServer

# Jobs are rows: every case also runs on PostgreSQL (bin/with-postgres).
pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 40 + "]" * 40
HUGE = "1" + "0" * 40
LORA_1E23 = "a fox <lora:demo-swap:100000000000000000000000>"
ATTENTION_1E40 = f"a (fox:{HUGE})"
PNG_OF_NOTHING = "iVBORw0KGgo="  # base64, but no image


def raw(text: str) -> bytes:
    """A body as written, for what json.dumps would not write (NaN, 1e400, lone surrogates)."""
    return text.encode()


# (method, path, body (dict: as JSON; bytes: as is; None: none), status, field at fault).
# The field is in the API's own terms; "__all__" is the body as a whole, None a route error.
NATIVE = [
    ("POST", "/api/generate", raw('{"prompt": "x", "guidance_scale": NaN}'), 400, "guidance_scale"),
    ("POST", "/api/generate", raw('{"prompt": "x", "guidance_scale": -Infinity}'), 400,
     "guidance_scale"),
    ("POST", "/api/generate", raw('{"prompt": "x", "steps": 1e400}'), 400, "steps"),
    ("POST", "/api/generate", raw(f'{{"prompt": "x", "seed": {HUGE}}}'), 400, "seed"),
    ("POST", "/api/generate", raw(f'{{"prompt": "x", "strength": -{HUGE}e9}}'), 400, "strength"),
    ("POST", "/api/generate", raw('{"prompt": "a \\ud800 fox"}'), 400, "prompt"),
    ("POST", "/api/generate", raw('{"prompt": "x", "negative_prompt": "\\udfff"}'), 400,
     "negative_prompt"),
    ("POST", "/api/generate", raw(f'{{"prompt": {DEEP}}}'), 400, "prompt"),
    ("POST", "/api/generate", raw(DEEP), 400, "__all__"),
    ("POST", "/api/generate", raw("[" * 100_000 + "]" * 100_000), 400, "__all__"),
    ("POST", "/api/generate", raw('{"prompt": "x",'), 400, "__all__"),
    ("POST", "/api/generate", raw("null"), 400, "__all__"),
    ("POST", "/api/generate", [{"prompt": "x"}], 400, "__all__"),
    ("POST", "/api/generate", "a fox", 400, "__all__"),
    ("POST", "/api/generate", {"prompt": {"text": "a fox"}}, 400, "prompt"),
    ("POST", "/api/generate", {"prompt": ["a fox"]}, 400, "prompt"),
    ("POST", "/api/generate", {"prompt": 5}, 400, "prompt"),
    ("POST", "/api/generate", {"prompt": "x", "negative_prompt": ["a"]}, 400, "negative_prompt"),
    ("POST", "/api/generate", {"prompt": "x", "steps": "20"}, 400, "steps"),
    ("POST", "/api/generate", {"prompt": "x", "steps": 2.5}, 400, "steps"),
    ("POST", "/api/generate", {"prompt": "x", "width": [512]}, 400, "width"),
    ("POST", "/api/generate", {"prompt": "x", "guidance_scale": {"a": 1}}, 400,
     "guidance_scale"),
    ("POST", "/api/generate", {"prompt": "x", "scheduler": 1}, 400, "scheduler"),
    ("POST", "/api/generate", {"prompt": "x", "resize_mode": 99}, 400, "resize_mode"),
    ("POST", "/api/generate", {"prompt": "x", "inpainting_fill": "everything"}, 400,
     "inpainting_fill"),
    ("POST", "/api/generate", {"prompt": "x", "count": "2"}, 400, "count"),
    ("POST", "/api/generate", {"prompt": "x", "count": 0}, 400, "count"),
    ("POST", "/api/generate", {"prompt": "x", "callback_url": 5}, 400, "callback_url"),
    ("POST", "/api/generate", {"prompt": LORA_1E23}, 400, "prompt"),
    ("POST", "/api/generate", {"prompt": ATTENTION_1E40}, 400, "prompt"),
    ("POST", "/api/generate", {"prompt": "x", "negative_prompt": "(" * 30 + "blur"}, 400,
     "negative_prompt"),
    ("POST", "/api/generate", {"prompt": "x", "mystery": 1}, 400, "mystery"),
    ("GET", "/api/generate", None, 405, None),
    ("DELETE", "/api/queue", None, 405, None),
    ("GET", "/api/sessions?ids=not-a-uuid", None, 400, "ids"),
    ("POST", f"/api/sessions/{uuid.uuid4()}", None, 405, None),
    ("GET", f"/api/sessions/{uuid.uuid4()}/cancel", None, 405, None),
    ("POST", f"/api/sessions/{uuid.uuid4()}/cancel", None, 404, None),
    ("GET", "/api/sessions/not-a-uuid", None, 404, None),
    ("POST", "/api/png-info", {"image": 5}, 400, "image"),
    ("GET", "/api/png-info", None, 405, None),
    ("GET", "/api/no-such-route", None, 404, None),
]  # fmt: skip

A1111 = [
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": "20"}, 422, "steps"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 0}, 422, "steps"),
    ("POST", "/sdapi/v1/txt2img", raw('{"prompt": "x", "cfg_scale": NaN}'), 422, "cfg_scale"),
    ("POST", "/sdapi/v1/txt2img", raw('{"prompt": "x", "cfg_scale": 1e400}'), 422, "cfg_scale"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "cfg_scale": 1000}, 422, "cfg_scale"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "negative_prompt": ["a"]}, 422,
     "negative_prompt"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": {"a": 1}}, 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", raw('{"prompt": "\\ud800"}'), 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "seed": 1.5}, 422, "seed"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "seed": -2}, 422, "seed"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "width": "512"}, 422, "width"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "width": 100}, 422, "width"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "batch_size": "2"}, 422, "batch_size"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 0}, 422, "batch_size"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 1000}, 422, "batch_size"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "n_iter": -1}, 422, "n_iter"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "override_settings": []}, 422,
     "override_settings"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "override_settings": ["a"]}, 422,
     "override_settings"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": ["a", {}]}, 422, "init_images"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {
        "sd_model_checkpoint": 5}}, 422, "override_settings.sd_model_checkpoint"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {
        "sd_model_checkpoint": "nope"}}, 422, "override_settings.sd_model_checkpoint"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": 5}, 422, "sampler_name"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Nope"}, 422, "sampler_name"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "scheduler": []}, 422, "scheduler"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "callback_url": 5}, 422, "callback_url"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": LORA_1E23}, 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", {"prompt": ATTENTION_1E40}, 422, "prompt"),
    ("POST", "/sdapi/v1/txt2img", raw(f'{{"prompt": "x", "alwayson_scripts": {DEEP}}}'), 422,
     "alwayson_scripts"),
    ("POST", "/sdapi/v1/txt2img", [{"prompt": "x"}], 422, "__all__"),
    ("POST", "/sdapi/v1/txt2img", raw("{"), 422, "__all__"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x"}, 422, "init_images"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": 5}, 422, "init_images"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [5]}, 422, "init_images"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": "abc"}, 422, "init_images"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [PNG_OF_NOTHING]}, 422,
     "init_images"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [PNG_OF_NOTHING], "mask": 5},
     422, "mask"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "resize_mode": -1}, 422, "resize_mode"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "resize_mode": 99}, 422, "resize_mode"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "resize_mode": "1"}, 422, "resize_mode"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "inpainting_fill": 9}, 422, "inpainting_fill"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "inpainting_mask_invert": 2}, 422,
     "inpainting_mask_invert"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "denoising_strength": "0.5"}, 422,
     "denoising_strength"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [PNG_OF_NOTHING],
     "denoising_strength": 2}, 422, "denoising_strength"),
    ("POST", "/sdapi/v1/img2img", {"prompt": "x", "mask_blur": "4"}, 422, "mask_blur"),
    ("POST", "/sdapi/v1/options", ["sd_model_checkpoint", "demo"], 422, "__all__"),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": 5}, 422, "sd_model_checkpoint"),
    ("POST", "/sdapi/v1/options", raw('{"sd_model_checkpoint": "demo", "x": NaN}'), 422, "x"),
    ("POST", "/sdapi/v1/png-info", [], 422, "__all__"),
    ("POST", "/sdapi/v1/png-info", {}, 422, "image"),
    ("POST", "/sdapi/v1/png-info", {"image": 5}, 422, "image"),
    ("POST", "/sdapi/v1/png-info", {"image": PNG_OF_NOTHING}, 422, "image"),
    ("GET", "/sdapi/v1/txt2img", None, 405, None),
    ("POST", "/sdapi/v1/sd-models", None, 405, None),
    ("DELETE", "/sdapi/v1/options", None, 405, None),
    ("GET", "/sdapi/v1/no-such-route", None, 404, None),
    ("GET", "/sdapi/v2/txt2img", None, 404, None),
]  # fmt: skip

OPENAI = [
    ("POST", "/v1/images/generations", {"prompt": "x", "n": "2"}, 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": "x", "n": 0}, 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": "x", "n": -1}, 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": "x", "n": 1.5}, 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": "x", "n": True}, 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": "x", "n": 1000}, 400, "n"),
    ("POST", "/v1/images/generations", raw('{"prompt": "x", "n": NaN}'), 400, "n"),
    ("POST", "/v1/images/generations", raw('{"prompt": "x", "n": 1e400}'), 400, "n"),
    ("POST", "/v1/images/generations", {"prompt": {"text": "x"}}, 400, "prompt"),
    ("POST", "/v1/images/generations", {"prompt": ["x"]}, 400, "prompt"),
    ("POST", "/v1/images/generations", {"prompt": 5}, 400, "prompt"),
    ("POST", "/v1/images/generations", {}, 400, "prompt"),
    ("POST", "/v1/images/generations", raw('{"prompt": "\\udc00"}'), 400, "prompt"),
    ("POST", "/v1/images/generations", {"prompt": LORA_1E23}, 400, "prompt"),
    ("POST", "/v1/images/generations", {"prompt": ATTENTION_1E40}, 400, "prompt"),
    ("POST", "/v1/images/generations", {"prompt": "x", "size": 512}, 400, "size"),
    ("POST", "/v1/images/generations", {"prompt": "x", "size": "9" * 30 + "x64"}, 400, "size"),
    ("POST", "/v1/images/generations", {"prompt": "x", "size": "4096x4096"}, 400, "size"),
    ("POST", "/v1/images/generations", {"prompt": "x", "model": ["demo"]}, 400, "model"),
    ("POST", "/v1/images/generations", {"prompt": "x", "model": "nope"}, 404, "model"),
    ("POST", "/v1/images/generations", {"prompt": "x", "response_format": 5}, 400,
     "response_format"),
    ("POST", "/v1/images/generations", {"prompt": "x", "response_format": "png"}, 400,
     "response_format"),
    ("POST", "/v1/images/generations", {"prompt": "x", "quality": 5}, 400, "quality"),
    ("POST", "/v1/images/generations", {"prompt": "x", "callback_url": []}, 400, "callback_url"),
    ("POST", "/v1/images/generations", raw(f'{{"prompt": "x", "user": {DEEP}}}'), 400, "user"),
    ("POST", "/v1/images/generations", ["x"], 400, "__all__"),
    ("POST", "/v1/images/generations", raw("not json"), 400, "__all__"),
    ("GET", "/v1/images/generations", None, 405, None),
    ("POST", "/v1/models", None, 405, None),
    ("GET", "/v1/images/edits", None, 405, None),
    ("GET", "/v1/no-such-route", None, 404, None),
]  # fmt: skip


COMFY_WORKFLOW = json.loads(
    (Path(__file__).parent / "fixtures" / "comfyui" / "open_webui_txt2img.json").read_text()
)["workflow"]
"""Open WebUI's default ComfyUI workflow; `comfy()` changes one input of it."""


def comfy(node: str, name: str, value) -> dict:
    workflow = json.loads(json.dumps(COMFY_WORKFLOW))
    workflow["4"]["inputs"]["ckpt_name"] = "demo"
    workflow[node]["inputs"][name] = value
    return {"prompt": workflow}


def comfy_raw(node: str, name: str, text: str) -> bytes:
    """The workflow with one input written as is (NaN, 1e400, a lone surrogate)."""
    return json.dumps(comfy(node, name, "@@")).replace('"@@"', text).encode()


# Node inputs are named `<node id>.<input>`; a field of the request outside the workflow by name.
COMFYUI = [
    ("POST", "/comfyui/prompt", comfy_raw("3", "cfg", "NaN"), 400, "3.cfg"),
    ("POST", "/comfyui/prompt", comfy_raw("3", "steps", "1e400"), 400, "3.steps"),
    ("POST", "/comfyui/prompt", comfy_raw("3", "seed", HUGE), 400, "3.seed"),
    ("POST", "/comfyui/prompt", comfy_raw("6", "text", '"a \\ud800 fox"'), 400, "6.text"),
    ("POST", "/comfyui/prompt", comfy("3", "seed", -1), 400, "3.seed"),
    ("POST", "/comfyui/prompt", comfy("3", "steps", "20"), 400, "3.steps"),
    ("POST", "/comfyui/prompt", comfy("3", "steps", 0), 400, "3.steps"),
    ("POST", "/comfyui/prompt", comfy("3", "cfg", True), 400, "3.cfg"),
    ("POST", "/comfyui/prompt", comfy("3", "cfg", 1000), 400, "3.cfg"),
    ("POST", "/comfyui/prompt", comfy("3", "sampler_name", 5), 400, "3.sampler_name"),
    ("POST", "/comfyui/prompt", comfy("3", "sampler_name", "nope"), 400, "3.sampler_name"),
    ("POST", "/comfyui/prompt", comfy("3", "denoise", "1"), 400, "3.denoise"),
    ("POST", "/comfyui/prompt", comfy("3", "model", "4"), 400, "3.model"),
    ("POST", "/comfyui/prompt", comfy("3", "positive", ["99", 0]), 400, "3.positive"),
    ("POST", "/comfyui/prompt", comfy("5", "width", 100), 400, "5.width"),
    ("POST", "/comfyui/prompt", comfy("5", "width", [512]), 400, "5.width"),
    ("POST", "/comfyui/prompt", comfy("5", "batch_size", 0), 400, "5.batch_size"),
    ("POST", "/comfyui/prompt", comfy("5", "batch_size", 1000), 400, "5.batch_size"),
    ("POST", "/comfyui/prompt", comfy("6", "text", {"a": 1}), 400, "6.text"),
    ("POST", "/comfyui/prompt", comfy("6", "text", LORA_1E23), 400, "6.text"),
    ("POST", "/comfyui/prompt", comfy("7", "text", ATTENTION_1E40), 400, "7.text"),
    ("POST", "/comfyui/prompt", comfy("4", "ckpt_name", "nope"), 400, "4.ckpt_name"),
    ("POST", "/comfyui/prompt", comfy("4", "ckpt_name", "../../etc/passwd"), 400,
     "4.ckpt_name"),
    ("POST", "/comfyui/prompt", comfy("9", "images", ["8", 1]), 400, "9.images"),
    ("POST", "/comfyui/prompt", {"prompt": {"1": {"class_type": "CheckpointLoader",
                                                  "inputs": {}}}}, 400, "1"),
    ("POST", "/comfyui/prompt", raw(f'{{"prompt": {DEEP}}}'), 400, "prompt"),
    ("POST", "/comfyui/prompt", {"prompt": "a fox"}, 400, "prompt"),
    ("POST", "/comfyui/prompt", {"prompt": {}}, 400, "prompt"),
    ("POST", "/comfyui/prompt", {"prompt": None}, 400, "prompt"),
    ("POST", "/comfyui/prompt", {**comfy("3", "seed", 1), "client_id": 5}, 400, "client_id"),
    ("POST", "/comfyui/prompt", {**comfy("3", "seed", 1), "prompt_id": "x"}, 400, "prompt_id"),
    ("POST", "/comfyui/prompt", [], 400, "__all__"),
    ("POST", "/comfyui/prompt", raw("{"), 400, "__all__"),
    ("POST", "/comfyui/upload/image", {"image": "x"}, 400, "image"),
    ("GET", "/comfyui/history?max_items=many", None, 400, "max_items"),
    ("POST", "/comfyui/history", {"delete": "all"}, 400, "delete"),
    ("POST", "/comfyui/queue", raw("[" * 40), 400, "__all__"),
    ("GET", "/comfyui/view?filename=../../etc/passwd&type=output", None, 404, None),
    ("GET", "/comfyui/view?filename=x.png&subfolder=/etc&type=temp", None, 404, None),
    ("DELETE", "/comfyui/prompt", None, 405, None),
    ("GET", "/comfyui/upload/image", None, 405, None),
    ("GET", "/comfyui/models/secrets", None, 404, None),
    ("GET", "/comfyui/no-such-route", None, 404, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    """One web server for the module, and no worker: nothing here may be queued."""
    with django_db_blocker.unblock():
        web = WebServer(tmp_path_factory.mktemp("malformed"))
    yield web
    web.stop()


@pytest.fixture
def key(server):
    return issue_key(user_for("tool"), "malformed")[1]


def send(server, key, method, path, body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
    # A request that queued a job would wait for it here (no worker runs): 30 s, then fail.
    return httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=30)


def named_fields(dialect: str, body: dict) -> tuple[str | None, ...]:
    """The fields an error body names, in the dialect's shape ("__all__": the whole body)."""
    if dialect == "native":
        assert isinstance(body["errors"], dict) and body["errors"]
        return tuple(body["errors"])
    if dialect == "a1111":
        assert isinstance(body["error"], str) and isinstance(body["errors"], str)
        if isinstance(body["detail"], str):  # an HTTPException: no field
            return (None,)
        assert all(item["type"] and item["msg"] for item in body["detail"])
        assert all(item["loc"][0] == "body" for item in body["detail"])
        return tuple(".".join(item["loc"][1:]) or "__all__" for item in body["detail"])
    if dialect == "comfyui":
        error = body["error"]
        assert error["type"] and error["message"] and isinstance(body["node_errors"], dict)
        named = [
            f"{node}.{item['extra_info']['input_name']}"
            if "input_name" in item["extra_info"] else node
            for node, errors in body["node_errors"].items()
            for item in errors["errors"]
        ]  # fmt: skip
        return (*named, error["extra_info"].get("field"))
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return (error["param"] or ("__all__" if error["param"] is None else None),)


def cases():
    for dialect, table in (
        ("native", NATIVE), ("a1111", A1111), ("openai", OPENAI), ("comfyui", COMFYUI),
    ):  # fmt: skip
        for method, path, body, status, field in table:
            shown = body if not isinstance(body, bytes) else body[:60]
            yield pytest.param(
                dialect, method, path, body, status, field, id=f"{method} {path} {shown!r:.70}"
            )


@pytest.mark.parametrize(("dialect", "method", "path", "body", "status", "field"), cases())
def test_a_malformed_request_is_a_4xx_json_error_naming_its_field_and_queues_nothing(
    server, key, dialect, method, path, body, status, field
):
    response = send(server, key, method, path, body)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    named = named_fields(dialect, response.json())
    if field is not None:
        assert field in named, response.json()
    elif dialect == "openai":
        assert named == ("__all__",)  # param null: a route's error, not a field's
    if response.status_code == 405:
        assert method not in response.headers["Allow"]
    assert "/work/" not in response.text and "Traceback" not in response.text
    assert not GenerationSession.objects.exists()
