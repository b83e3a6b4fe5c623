"""ComfyUI's WebSocket, `/comfyui/ws?clientId=...`: a small ASGI route in front of Django.

`sdsite.asgi` hands every `websocket` scope here (Django's own handler takes none).
A socket follows the prompts its client posts (`client_id` in POST /prompt), and those
its owner posts with no client id, as ComfyUI sends such prompts to every socket: it
finds them by reading the prompts table every PROMPT_POLL seconds (the reads of every
socket of the process batched into one query, on the progress hub's thread), then
follows each job with the hub that feeds the SSE streams (`web/hub.py`) and turns the
change between two snapshots into ComfyUI's messages: `status` (on connect, and as the
queue changes), `execution_start`, `execution_cached`, `executing` (node by node),
`progress` (value, max), binary preview frames, `executed` with the SaveImage node's
images, `execution_success` / `execution_error` / `execution_interrupted`, and
`executing` with `node: null` last. API keys apply as on the HTTP routes: Bearer (or
Basic) in the handshake, unless SD_API_AUTH=off; a browser's page from another site is
refused (its Origin). A socket holds a slot under the
progress streams' caps (SD_MAX_STREAMS, SD_MAX_STREAMS_PER_OWNER).
"""

import asyncio
import base64
import contextlib
import json
import logging
import struct
import uuid
import weakref
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from django.db.models import Q
from django.http.request import split_domain_port

from ..addresses import anonymous_api_allowed
from ..apikeys import key_in_header
from ..models import ComfyPrompt, GenerationSession, Status, prompt_sessions
from ..web.api_errors import comfyui_error_body
from ..web.hub import BatchedReads, ProgressHub, get_hub
from ..web.lean_route import host_allowed
from .comfyui_nodes import image_entry, timestamp

PATH = "/comfyui/ws"
PROMPT_POLL = 0.25
"""Seconds between two looks for new prompts of a socket's client."""
PREVIEW = 1
"""ComfyUI's binary event type of a preview image."""
JPEG = 1
"""ComfyUI's image type of a JPEG preview (2 is PNG)."""
UNFINISHED = (Status.PENDING, Status.RUNNING)
DENIALS = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 503: "unavailable"}
"""The error type of a refused handshake, by its status."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Followed:
    """A prompt a socket follows: its jobs in their batch's order and its nodes."""

    number: int
    prompt_id: str
    session_ids: tuple
    nodes: dict


def read_prompts(keys) -> dict:
    """{(owner id, client id, after): ([Followed...], the highest number seen)}, in one
    query. `after` None (a socket that just opened): the unfinished prompts, up to the highest
    number of any (read first: a prompt made meanwhile is the next look's); else the prompts
    numbered after it."""
    highest = ComfyPrompt.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    query = Q(pk__in=[])
    for owner_id, client_id, after in keys:
        mine = Q(owner__isnull=True) if owner_id is None else Q(owner_id=owner_id)
        mine &= Q(client_id="") | Q(client_id=client_id)
        if after is None:
            query |= mine & Q(session__status__in=UNFINISHED, pk__lte=highest)
        else:
            query |= mine & Q(pk__gt=after)
    rows = list(ComfyPrompt.objects.filter(query).select_related("session").order_by("pk")[:200])
    members = prompt_sessions(rows)
    found = {}
    for key in keys:
        owner_id, client_id, after = key
        followed = [
            Followed(row.pk, str(row.prompt_id), tuple(s.pk for s in members[row.pk]), row.nodes)
            for row in rows
            if row.owner_id == owner_id
            and row.client_id in ("", client_id)
            and (row.pk <= highest if after is None else row.pk > after)
            and (after is not None or row.session.status in UNFINISHED)
        ]
        last = max([f.number for f in followed], default=after or 0)
        found[key] = (followed, highest if after is None else last)
    return found


def read_images(session_ids) -> dict:
    """{session id: its image's storage name}."""
    rows = GenerationSession.objects.filter(pk__in=list(session_ids))
    return dict(rows.values_list("pk", "image"))


_readers: "weakref.WeakKeyDictionary[ProgressHub, tuple]" = weakref.WeakKeyDictionary()


def readers(hub: ProgressHub) -> tuple[BatchedReads, BatchedReads]:
    """This hub's batched reads of prompts and of image names (one pair per process)."""
    found = _readers.get(hub)
    if found is None:
        found = _readers[hub] = (BatchedReads(hub, read_prompts), BatchedReads(hub, read_images))
    return found


def same_origin(headers: dict) -> bool:
    """A browser's page from another site may not open the socket (browsers send `Origin`;
    pages may open sockets to any site, and with SD_API_AUTH=off no key stops them). Clients
    that are not browsers send none, or their target's own (websocket-client): the host is
    compared, not the port, which a proxy in front changes."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return True
    host, _ = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
    return urlsplit(origin).hostname == host.strip("[]").lower()


def is_comfyui_socket(scope) -> bool:
    return scope["type"] == "websocket" and scope["path"].rstrip("/") == PATH


async def websocket_app(scope, receive, send) -> None:
    """Every WebSocket: ComfyUI's at PATH; any other is refused (403)."""
    if not is_comfyui_socket(scope):
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
        return
    await ComfySocket(scope, receive, send).run()


class ComfySocket:
    def __init__(self, scope, receive, send):
        self.scope, self.receive, self.send = scope, receive, send
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.client_id = (query.get("clientId") or [""])[0][:200] or uuid.uuid4().hex
        self.queue: asyncio.Queue = asyncio.Queue()
        self.remaining = 0
        """The prompts queued or running that this socket knows of."""

    async def deny(self, status: int, message: str) -> None:
        """Answer the handshake with an HTTP error (where the server can), else close."""
        if "websocket.http.response" in self.scope.get("extensions", {}):
            kind = DENIALS.get(status, "invalid_request")
            body = json.dumps(comfyui_error_body(message, kind)).encode()
            headers = [(b"content-type", b"application/json")]
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="sdsite"'))
            await self.send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.send({"type": "websocket.close", "code": 1008})

    async def run(self) -> None:
        if (await self.receive())["type"] != "websocket.connect":
            return
        headers = dict(self.scope["headers"])
        if not host_allowed(headers):
            return await self.deny(400, "Unknown host.")
        if not same_origin(headers):
            return await self.deny(403, "Another site's page may not open this socket.")
        hub = get_hub()
        key = key_in_header(headers.get(b"authorization", b"").decode("latin-1"))
        self.owner_id = await hub.read_key_user(key) if key else None
        address = (self.scope.get("client") or ("", 0))[0]
        if self.owner_id is None and not anonymous_api_allowed(address):
            return await self.deny(
                401, "A valid API key is required: Authorization: Bearer <key> (manage.py apikey)."
            )
        holder = f"user:{self.owner_id}" if self.owner_id is not None else f"address:{address}"
        slot = hub.reserve(holder)
        if isinstance(slot, str):
            return await self.deny(503, slot)
        try:
            await self.serve(hub)
        finally:
            slot.release()

    async def serve(self, hub: ProgressHub) -> None:
        prompts, self.images = readers(hub)
        followed, after = await prompts.get((self.owner_id, self.client_id, None))
        await self.send({"type": "websocket.accept"})
        for prompt in followed:
            self.queue.put_nowait(prompt)
        self.remaining = len(followed)
        await self.status(sid=True)
        tasks = [
            asyncio.ensure_future(self.client_gone()),
            asyncio.ensure_future(self.look_for_prompts(prompts, after)),
            asyncio.ensure_future(self.follow_prompts(hub)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                problem = None if task.cancelled() else task.exception()
                if problem is not None and not isinstance(problem, OSError):  # OSError: gone
                    logger.error("ComfyUI socket failed", exc_info=problem)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": 1000})

    async def client_gone(self) -> None:
        while (await self.receive())["type"] != "websocket.disconnect":
            pass  # what a client says is not read (ComfyUI's clients send nothing needed)

    async def look_for_prompts(self, prompts: BatchedReads, after: int) -> None:
        while True:
            await asyncio.sleep(PROMPT_POLL)
            found, after = await prompts.get((self.owner_id, self.client_id, after))
            if found:  # the queue's new length first, then the prompts' own messages
                self.remaining += len(found)
                await self.status()
            for prompt in found:
                self.queue.put_nowait(prompt)

    async def follow_prompts(self, hub: ProgressHub) -> None:
        while True:
            prompt = await self.queue.get()
            if not await PromptRun(self, prompt).follow(hub):
                return  # the server is stopping
            self.remaining = max(0, self.remaining - 1)
            await self.status()

    async def message(self, kind: str, data: dict) -> None:
        text = json.dumps({"type": kind, "data": data}, separators=(",", ":"))
        await self.send({"type": "websocket.send", "text": text})

    async def status(self, sid: bool = False) -> None:
        data = {"status": {"exec_info": {"queue_remaining": self.remaining}}}
        await self.message("status", data | ({"sid": self.client_id} if sid else {}))

    async def preview(self, data_url: str) -> None:
        """ComfyUI's binary frame: event type and image type (4-byte big-endian each), then
        the image."""
        jpeg = base64.b64decode(data_url.split(",", 1)[1])
        frame = struct.pack(">II", PREVIEW, JPEG) + jpeg
        await self.send({"type": "websocket.send", "bytes": frame})


class PromptRun:
    """One prompt's messages, from the snapshots of its jobs (one after the other)."""

    def __init__(self, socket: ComfySocket, prompt: Followed):
        self.socket, self.prompt = socket, prompt
        self.nodes = prompt.nodes
        self.started = False
        self.shown = 0
        """The progress value sent so far (steps over the batch's jobs)."""
        self.preview = None

    def ids(self) -> dict:
        return {"prompt_id": self.prompt.prompt_id}

    async def executing(self, node) -> None:
        await self.socket.message("executing", {"node": node, "display_node": node} | self.ids())

    async def start(self) -> None:
        self.started = True
        now = {"timestamp": timestamp()}
        await self.socket.message("execution_start", self.ids() | now)
        await self.socket.message("execution_cached", {"nodes": []} | self.ids() | now)
        nodes = self.nodes
        order = [nodes["loader"], *nodes.get("loras", []), nodes["positive"], nodes["negative"]]
        order += [nodes[r] for r in ("load_image", "encode") if r in nodes] or [nodes["latent"]]
        for node in [*dict.fromkeys(order), nodes["sampler"]]:
            await self.executing(node)

    async def progress(self, value: int, most: int) -> None:
        if value <= self.shown:
            return
        self.shown = value
        data = {"value": value, "max": most, "node": self.nodes["sampler"]} | self.ids()
        await self.socket.message("progress", data)

    async def follow(self, hub: ProgressHub) -> bool:
        """Send the prompt's messages until its jobs end: False if the server stops first."""
        count = len(self.prompt.session_ids)
        ended = []
        for index, session_id in enumerate(self.prompt.session_ids):
            async with hub.subscribe(session_id) as subscription:
                while True:
                    snapshot = await subscription.next_snapshot()
                    if subscription.closed:
                        return False
                    if snapshot is None:  # a keepalive: uvicorn pings the socket itself
                        continue
                    subscription.spoke = True
                    if snapshot.status == Status.PENDING:
                        continue
                    if not self.started:
                        await self.start()
                    total = snapshot.total_steps
                    step = total if snapshot.status == Status.COMPLETED else snapshot.current_step
                    await self.progress(index * total + step, count * total)
                    if snapshot.preview and snapshot.preview != self.preview:
                        self.preview = snapshot.preview
                        await self.socket.preview(snapshot.preview)
                    if snapshot.is_finished:
                        ended.append((session_id, snapshot))
                        break
        await self.end(ended)
        return True

    async def end(self, ended: list) -> None:
        ids, nodes, now = self.ids(), self.nodes, {"timestamp": timestamp()}
        if not self.started:
            await self.start()
        failed = next((s for _, s in ended if s.status == Status.FAILED), None)
        cancelled = next((s for _, s in ended if s.status == Status.CANCELLED), None)
        done = [sid for sid, s in ended if s.status == Status.COMPLETED]
        base = ids | {"node_id": nodes["sampler"], "node_type": "KSampler", "executed": []}
        if failed is not None:
            await self.socket.message(
                "execution_error", base | now | {
                    "exception_message": failed.error or "Generation failed.",
                    "exception_type": "RuntimeError", "traceback": [], "current_inputs": {},
                    "current_outputs": {}},
            )  # fmt: skip
        elif cancelled is not None:
            await self.socket.message("execution_interrupted", base | now)
        else:
            names = await asyncio.gather(*(self.socket.images.get(sid) for sid in done))
            images = [image_entry(name) for name in names if name]
            for node in (nodes["decode"], nodes["save"]):
                await self.executing(node)
            save = nodes["save"]
            await self.socket.message(
                "executed",
                {"node": save, "display_node": save, "output": {"images": images}} | ids,
            )
            await self.socket.message("execution_success", ids | now)
        await self.executing(None)
