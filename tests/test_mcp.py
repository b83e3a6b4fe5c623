"""The MCP server, driven by the official `mcp` client: over stdio (`manage.py mcp`, spawned)
and over streamable HTTP at /mcp on a real uvicorn, with a real worker making the images."""

import asyncio
import base64
import io
import json
import sys

import httpx
import httpx2
import pytest
from django.conf import settings
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ImageContent, TextContent
from PIL import Image

from generator.apikeys import issue_key, user_for
from generator.models import GenerationSession, Status
from generator.ownership import Viewer
from generator.params import BY_NAME
from tests.support.processes import ROOT, WebServer, WorkerProcess, process_env, wait_for

# Jobs are queued, followed and cancelled through the database: CI runs it on both engines.
pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    tmp_path = tmp_path_factory.mktemp("mcp")
    with django_db_blocker.unblock():
        web, worker = WebServer(tmp_path), WorkerProcess(tmp_path)
    yield web
    worker.stop()
    web.stop()


def over_http(server, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT))
    return Client(streamable_http_client(f"{server.url}/mcp", http_client=http))


async def generate(client: Client, **arguments) -> tuple[list, list]:
    """The result's content and the progress notifications, as (progress, total)."""
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total))

    async with client:
        result = await client.call_tool("generate", arguments, progress_callback=on_progress)
    assert not result.is_error, result.content
    return result.content, progress


def pngs(content) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(part.data)))
        for part in content
        if isinstance(part, ImageContent) and part.mime_type == "image/png"
    ]


def jobs_of(content) -> list[dict]:
    (text,) = [part.text for part in content if isinstance(part, TextContent)]
    return json.loads(text)["jobs"]


def test_generate_over_http_answers_the_images_with_progress_in_order(server):
    user = user_for("assistant")
    _, key = issue_key(user, "mcp")

    content, progress = asyncio.run(
        generate(over_http(server, key), prompt="a red fox", steps=6, width=64, height=64,
                 seed=21, count=2)
    )  # fmt: skip

    assert [image.size for image in pngs(content)] == [(64, 64), (64, 64)]
    jobs = jobs_of(content)
    assert [job["parameters"]["seed"] for job in jobs] == [21, 22]
    assert {job["status"] for job in jobs} == {"completed"}
    # Absolute, at SD_PUBLIC_URL (as webhooks' are), which is not the test server's port.
    assert jobs[0]["image_url"].startswith(f"{settings.SD_PUBLIC_URL}/media/images/")
    path = jobs[0]["image_url"].removeprefix(settings.SD_PUBLIC_URL)
    assert httpx.get(server.url + path).headers["content-type"] == "image/png"
    values = [value for value, _ in progress]
    assert values == sorted(set(values)) and len(values) >= 2  # strictly increasing
    assert progress[-1] == (12, 12)  # both jobs' 6 steps
    mine = GenerationSession.objects.owned_by(Viewer(user_id=user.pk))
    assert sorted(mine.values_list("seed", flat=True)) == [21, 22]  # in their history


def test_list_models_job_status_and_cancel_see_only_the_caller_s_jobs(server):
    _, key = issue_key(user_for("assistant"), "mcp")
    _, other_key = issue_key(user_for("someone-else"), "mcp")
    content, _ = asyncio.run(generate(over_http(server, key), prompt="x", steps=2, width=64,
                                      height=64))  # fmt: skip
    (job,) = jobs_of(content)

    async def calls(key):
        async with over_http(server, key) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            models = await client.call_tool("list_models", {})
            status = await client.call_tool("job_status", {"job_id": job["session_id"]})
            cancel = await client.call_tool("cancel", {"job_id": job["session_id"]})
            return tools, models, status, cancel

    tools, models, status, cancel = asyncio.run(calls(key))
    assert set(tools) == {"generate", "list_models", "job_status", "cancel"}
    # generate's arguments are the spec's (generator/params.py): its ranges, its choices.
    arguments = tools["generate"].input_schema["properties"]
    steps, sampler = arguments["steps"]["anyOf"][0], arguments["scheduler"]["anyOf"][0]
    assert (steps["minimum"], steps["maximum"]) == (
        BY_NAME["steps"].minimum,
        BY_NAME["steps"].maximum,
    )
    assert sampler["enum"] == [value for value, _ in BY_NAME["scheduler"].choices]
    assert "strength" not in arguments  # it needs an input image
    listing = json.loads(models.content[0].text)
    assert (listing["models"], listing["default"]) == (["demo"], "demo")
    assert "Euler a" in listing["samplers"]
    assert pngs(status.content)[0].size == (64, 64)
    assert json.loads(status.content[-1].text)["status"] == "completed"
    assert json.loads(cancel.content[0].text)["outcome"] == "finished"

    _, _, status, cancel = asyncio.run(calls(other_key))
    assert status.is_error and "of yours" in status.content[0].text
    assert cancel.is_error
    assert GenerationSession.objects.get().status == Status.COMPLETED


def test_bad_parameters_are_a_tool_error_naming_the_field(server):
    _, key = issue_key(user_for("assistant"), "mcp")

    async def call():
        async with over_http(server, key) as client:
            return await client.call_tool("generate", {"prompt": "x", "width": 65})

    result = asyncio.run(call())
    assert result.is_error and "width" in result.content[0].text
    assert "multiple of 8" in result.content[0].text  # the form's own message
    assert not GenerationSession.objects.exists()


def test_mcp_over_http_answers_401_without_a_valid_key(server):
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer sdk_wrong"}, {"x-sdsite-caller": "anonymous"}):
        response = httpx.post(
            f"{server.url}/mcp", json=initialize, headers=accept | headers, timeout=60
        )
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"] == "invalid_token"
    with pytest.raises(Exception):  # noqa: B017 - the client's own error for a 401
        asyncio.run(over_http(server, None).__aenter__())
    _, key = issue_key(user_for("assistant"), "mcp")
    response = httpx.post(
        f"{server.url}/mcp",
        json=initialize,
        headers=accept | {"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200


def test_stdio_server_generates_as_the_user_it_was_started_for(server):
    user = user_for("desk")
    parameters = StdioServerParameters(
        command=sys.executable, args=["manage.py", "mcp", "--user", "desk"],
        env=process_env(), cwd=ROOT,
    )  # fmt: skip

    content, progress = asyncio.run(
        generate(Client(parameters), prompt="a lighthouse", steps=3, width=64, height=64, seed=5)
    )

    assert [image.size for image in pngs(content)] == [(64, 64)]
    assert progress[-1] == (3, 3)
    session = GenerationSession.objects.get()
    assert (session.owner_id, session.seed, session.status) == (user.pk, 5, Status.COMPLETED)


def test_a_call_the_client_gives_up_cancels_its_jobs(server):
    _, key = issue_key(user_for("assistant"), "mcp")

    async def give_up():
        async with over_http(server, key) as client:
            call = asyncio.create_task(
                client.call_tool(
                    "generate", {"prompt": "x", "steps": 150, "width": 128, "height": 128}
                )  # fmt: skip
            )
            running = GenerationSession.objects.filter(status=Status.RUNNING, current_step__gte=1)
            while not await asyncio.to_thread(running.exists):
                assert not call.done(), call
                await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(asyncio.wait_for(give_up(), TIMEOUT))
    wait_for(
        lambda: GenerationSession.objects.get().status == Status.CANCELLED,
        timeout=60, message="the job to be cancelled",
    )  # fmt: skip
