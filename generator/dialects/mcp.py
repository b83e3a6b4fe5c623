"""An MCP server (the official `mcp` SDK) so that assistants can make images.

Tools: `generate` (the spec's parameters that need no input image, and `count`),
`list_models`, `job_status` and `cancel`. `generate` queues through the same form
and services as the other dialects, follows its jobs' rows and sends their steps as
MCP progress notifications (when the client asked for them with a progress token),
and answers the images as PNG image content with a text part that names the jobs.

Who asks: over stdio (`manage.py mcp --user USER`), that user; over streamable HTTP
(`/mcp`, mcp_asgi.py), the API key's user, which the ASGI route found and passed on
in the header it alone sets (mcp_caller.py) (an anonymous caller where SD_API_AUTH=off lets
its address in). Jobs belong to that user and show in their history; the per-owner
limits apply as on the other APIs.
"""

import asyncio
import inspect
import json
import uuid
from collections.abc import Callable
from typing import Annotated, Literal

import anyio
from asgiref.sync import sync_to_async
from django.conf import settings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent
from pydantic import Field

from ..disk import MediaQuotaExceeded
from ..models import GenerationSession, Status
from ..params import PARAMETERS
from ..pipelines.checkpoints import offered_models
from ..pipelines.schedulers import ALL_SCHEDULERS
from ..services import session_cancel
from ..web.limits import TooManyRequests
from ..web.serializers import session_as_dict
from .common import WAIT_INTERVAL, image_base64, queue
from .mcp_caller import Caller

GENERATE_PARAMETERS = tuple(p for p in PARAMETERS if not p.needs)
"""The spec's parameters `generate` takes: those that mean something without an image."""
WAIT_LIMIT = 3600.0
"""Seconds `generate` follows its jobs at most; then it answers what has ended."""


def session_text(session) -> dict:
    """What a tool tells about a job: its state, the parameters it ran with, and its image's
    address (absolute, at SD_PUBLIC_URL: an assistant has no page to resolve it against)."""
    found = session_as_dict(session)
    told = {key: found[key] for key in (
        "session_id", "status", "phase", "current_step", "total_steps", "error", "image_url",
        "parameters",
    )}  # fmt: skip
    if told["image_url"] and told["image_url"].startswith("/"):
        told["image_url"] = settings.SD_PUBLIC_URL + told["image_url"]
    return told


def image_content(session) -> ImageContent:
    return ImageContent(type="image", data=image_base64(session), mime_type="image/png")


def queue_jobs(caller: Caller, data: dict, count: int) -> list:
    """Queue through the dialects' one form and the services; ToolError saying why not."""
    try:
        sessions, errors = queue(caller.request(), data, {}, count, owner=caller.owner())
    except (TooManyRequests, MediaQuotaExceeded) as refused:
        raise ToolError(str(refused)) from None
    if errors:
        raise ToolError("; ".join(f"{field}: {' '.join(m)}" for field, m in errors.items()))
    return sessions


def cancel_all(ids) -> None:
    for pk in ids:
        session_cancel(pk)


def read_sessions(ids) -> list:
    return list(GenerationSession.objects.filter(pk__in=ids).order_by("seed", "created_at"))


def steps_done(sessions) -> tuple[int, int]:
    """(steps done, steps in all) over a batch's jobs: an ended job counts whole."""
    done = total = 0
    for session in sessions:
        steps = session.total_steps or 0
        total += steps
        done += steps if session.is_finished else min(session.current_step or 0, steps)
    return done, total


async def follow(ctx: Context, ids: list) -> list:
    """The sessions once all have ended, their steps reported as progress on the way, each
    notification past the one before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    reported = 0
    while True:
        sessions = await sync_to_async(read_sessions)(ids)
        done, total = steps_done(sessions)
        if done > reported:
            reported = done
            await ctx.report_progress(done, total, f"step {done} of {total}")
        if all(session.is_finished for session in sessions) or loop.time() > deadline:
            return sessions
        await asyncio.sleep(WAIT_INTERVAL)


def build_server(caller_of: Callable[[Context], Caller | None]) -> MCPServer:
    """The MCP server; `caller_of(ctx)` (run off the event loop) says who calls a tool
    (None: nobody it knows)."""
    server = MCPServer(
        "sdsite",
        instructions="Makes images with Stable Diffusion: call generate with a prompt; "
        "list_models names the models; job_status and cancel follow or stop a job.",
    )

    async def caller(ctx: Context) -> Caller:
        who = await sync_to_async(caller_of)(ctx)
        if who is None:
            raise ToolError("Not authenticated: send an API key (Authorization: Bearer <key>).")
        return who

    async def generate(ctx: Context, **values) -> list:
        who = await caller(ctx)
        data = {name: value for name, value in values.items() if value is not None}
        count = data.pop("count", None) or 1
        sessions = await sync_to_async(queue_jobs)(who, data, count)
        ids = [session.pk for session in sessions]
        try:
            finished = await follow(ctx, ids)
        except anyio.get_cancelled_exc_class():  # the client gave up the call: so do the jobs
            with anyio.CancelScope(shield=True):
                await sync_to_async(cancel_all)(ids)
            raise
        done = [session for session in finished if session.status == Status.COMPLETED]
        if not done:
            reasons = "; ".join(s.error or s.status for s in finished)
            raise ToolError(f"The generation ended without an image: {reasons}")
        images = [await sync_to_async(image_content)(session) for session in done]
        jobs = [session_text(session) for session in finished]
        return [*images, TextContent(type="text", text=json.dumps({"jobs": jobs}))]

    generate.__signature__ = generate_signature()
    generate.__annotations__ = {"ctx": Context, "return": list}
    server.add_tool(
        generate,
        description="Make images from a prompt with Stable Diffusion; answers the PNG images "
        "and, as text, each job's id, seed and parameters. Progress is reported by step.",
        structured_output=False,
    )

    def models_listing() -> dict:
        return {"models": offered_models(), "default": settings.SD_MODEL,
                "samplers": list(ALL_SCHEDULERS)}  # fmt: skip

    async def list_models(ctx: Context) -> str:
        """The models `generate` takes (the first is the default), and the samplers."""
        await caller(ctx)
        return json.dumps(await sync_to_async(models_listing)())

    def own_session(who: Caller, job_id: str):
        try:
            return who.sessions().filter(pk=uuid.UUID(job_id)).first()
        except ValueError:  # not a UUID: no such job
            return None

    def status_of(who: Caller, job_id: str) -> list:
        session = own_session(who, job_id)
        if session is None:
            raise ToolError(f"No job {job_id[:60]!r} of yours.")
        found = [TextContent(type="text", text=json.dumps(session_text(session)))]
        if session.status == Status.COMPLETED and session.image:
            found.insert(0, image_content(session))
        return found

    async def job_status(ctx: Context, job_id: str) -> list:
        """A job's state, step and parameters, and its image once it is done."""
        return await sync_to_async(status_of)(await caller(ctx), job_id)

    def cancel_job(who: Caller, job_id: str) -> str:
        session = own_session(who, job_id)
        if session is None:
            raise ToolError(f"No job {job_id[:60]!r} of yours.")
        return json.dumps({"session_id": str(session.pk), "outcome": session_cancel(session.pk)})

    async def cancel(ctx: Context, job_id: str) -> str:
        """Cancel a job: a queued one at once, a running one at its next step."""
        return await sync_to_async(cancel_job)(await caller(ctx), job_id)

    for tool in (list_models, job_status, cancel):
        server.add_tool(tool, structured_output=False)
    return server


def generate_signature() -> inspect.Signature:
    """`generate`'s arguments, from the parameter spec: its type, range and help."""
    arguments = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for parameter in GENERATE_PARAMETERS:
        limits = {"ge": parameter.minimum, "le": parameter.maximum}
        if parameter.kind == "text":
            limits = {"max_length": parameter.max_length}
        limits = {key: value for key, value in limits.items() if value is not None}
        field = Field(description=parameter.help, **limits)
        required = parameter.name == "prompt"
        kind = parameter.python_type
        if parameter.choices:  # an enum in the schema, for the assistant
            kind = Literal[tuple(value for value, _ in parameter.choices)]
        kind = kind if required else kind | None
        arguments.append(
            inspect.Parameter(
                parameter.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind, field],
                default=inspect.Parameter.empty if required else None,
            )
        )
    count = Field(description="How many images, with seeds seed, seed+1, ...", ge=1,
                  le=settings.SD_MAX_COUNT)  # fmt: skip
    arguments.append(
        inspect.Parameter(
            "count", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[int | None, count],
            default=None,
        )
    )  # fmt: skip
    return inspect.Signature(arguments)
