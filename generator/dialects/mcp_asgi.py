"""`/mcp`: the MCP server (mcp.py) over streamable HTTP, an ASGI route beside Django.

Each request needs an API key (`Authorization: Bearer <key>`, as on the other API
routes), or a client that SD_API_AUTH=off lets in without one (SD_API_ANONYMOUS_FROM);
others get 401 before the MCP SDK sees them. The route names the caller to the tools
in CALLER_HEADER, after dropping any such header the client sent.

The SDK serves it stateless (each POST carries its own tool call and its progress
notifications on its own SSE response), so any web process can answer any request
under `uvicorn --workers N`. Its session manager needs a running task group: it is
started with the first request, in that process's event loop (uvicorn runs with
`--lifespan off` in deploy.md). DNS-rebinding protection is off: the route takes no
cookie, so a rebound page holds no credential to borrow.
"""

import asyncio
import json

from asgiref.sync import sync_to_async

from ..addresses import anonymous_api_allowed
from ..apikeys import authenticate_header
from .mcp_caller import CALLER_HEADER, http_caller

PATH = "/mcp"
NOT_AUTHENTICATED = {
    "error": "invalid_token",
    "error_description": "A valid API key is required: Authorization: Bearer <key> "
    "(manage.py apikey create USERNAME).",
}


def is_mcp_request(scope) -> bool:
    return scope["type"] == "http" and (scope["path"] == PATH or scope["path"] == PATH + "/")


def caller_header(authorization: str, address: str) -> str | None:
    """CALLER_HEADER's value for a request, or None to refuse it (401)."""
    key = authenticate_header(authorization) if authorization else None
    if key is not None:
        return f"key:{key.pk}@{address}"
    if anonymous_api_allowed(address):
        return f"anonymous:{address}"
    return None


class McpRoute:
    """The ASGI application of /mcp: the key check, then the SDK's session manager."""

    def __init__(self):
        self.server = None
        self.ready: asyncio.Event | None = None
        self.runner: asyncio.Task | None = None

    async def __call__(self, scope, receive, send):
        headers = [(k, v) for k, v in scope["headers"] if k != CALLER_HEADER.encode()]
        authorization = next((v for k, v in headers if k == b"authorization"), b"")
        address = (scope.get("client") or ("", 0))[0]
        caller = await sync_to_async(caller_header)(authorization.decode("latin-1"), address)
        if caller is None:
            return await refuse(send)
        headers.append((CALLER_HEADER.encode(), caller.encode("latin-1")))
        manager = await self.manager()
        await manager.handle_request(dict(scope, headers=headers), receive, send)

    async def manager(self):
        """The SDK's session manager, running in this event loop from the first request."""
        if self.ready is None:
            self.ready = asyncio.Event()
            self.runner = asyncio.create_task(self.run())
        await self.ready.wait()
        if self.server is None:  # it failed to load: the runner's exception is in the log
            raise RuntimeError("The MCP server could not start.")
        return self.server.session_manager

    async def run(self):
        # Loaded in a thread, off the event loop: seconds of imports the other requests of
        # this process do not wait for.
        try:
            self.server = await asyncio.to_thread(load_server)
        except Exception:
            self.ready.set()  # the waiting requests fail, rather than hang
            raise
        async with self.server.session_manager.run():
            self.ready.set()
            await asyncio.Event().wait()  # for the process's life


def load_server():
    """The MCP server with its streamable HTTP transport. The SDK loads here, with the first
    /mcp request, not with the web process (seconds, and memory, for a route many sites
    never serve)."""
    from mcp.server.transport_security import TransportSecuritySettings

    from .mcp import build_server

    server = build_server(lambda ctx: http_caller(ctx.headers))
    server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return server


async def refuse(send) -> None:
    body = json.dumps(NOT_AUTHENTICATED).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="sdsite"'),
        ],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


mcp_app = McpRoute()
