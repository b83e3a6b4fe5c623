"""The ASGI entry point uvicorn serves: Django, with request bodies capped, the client's
address read past trusted proxies, the progress stream on its lean route, MCP at /mcp and
ComfyUI's WebSocket."""

import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")

django_application = get_asgi_application()

from generator.addresses import with_client_address  # noqa: E402
from generator.dialects.comfyui_ws import websocket_app  # noqa: E402
from generator.dialects.mcp_asgi import is_mcp_request, mcp_app  # noqa: E402
from generator.media_storage import record_site_settings, storage_problem  # noqa: E402
from generator.web.body_limit import limit_bodies  # noqa: E402
from generator.web.lean_route import is_progress_request, progress_app  # noqa: E402


async def route(scope, receive, send):
    # WebSockets (ComfyUI's /comfyui/ws) are served in front of Django, which takes none.
    if scope["type"] == "websocket":
        return await websocket_app(scope, receive, send)
    # Long-lived progress streams skip Django's request handling, which holds a
    # thread per open request; everything else is plain Django.
    if is_progress_request(scope):
        return await progress_app(scope, receive, send)
    if is_mcp_request(scope):  # MCP's streamable HTTP, beside Django (mcp_asgi.py)
        return await mcp_app(scope, receive, send)
    return await django_application(scope, receive, send)


# Bodies over SD_MAX_BODY_MB are refused while they stream, on every route; every route
# sees the client's address, not a proxy's (SD_TRUSTED_PROXIES, generator.addresses).
application = limit_bodies(with_client_address(route))


def _at_start() -> None:
    """The web's media settings, for the workers to compare at their start (on a thread of
    its own: uvicorn imports this module with its event loop running); then, not waited
    for, the media bucket's client is made and checked once, so the first /readyz does not
    pay for it."""
    recorder = threading.Thread(target=record_site_settings, name="site-settings", daemon=True)
    recorder.start()
    recorder.join(timeout=10)
    threading.Thread(target=storage_problem, name="storage-check", daemon=True).start()


_at_start()
