"""Who calls an MCP tool (mcp.py): a user over stdio, or whom the /mcp route let in.

Apart from mcp.py so that the route (mcp_asgi.py) reads and writes CALLER_HEADER
without importing the MCP SDK, which loads with the first /mcp request.
"""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from ..apikeys import ApiKey
from ..models import GenerationSession
from ..ownership import Viewer

CALLER_HEADER = "x-sdsite-caller"
"""Set by the /mcp route alone (it drops any a client sends): `key:<id>@<address>` or
`anonymous:<address>`."""


@dataclass(frozen=True)
class Caller:
    """Who calls a tool: the jobs' owner (None: nobody, an anonymous caller), the API key
    it came with, and its address (the per-owner limits count it)."""

    user: Any = None
    api_key: ApiKey | None = None
    address: str = ""

    def request(self) -> HttpRequest:
        """A request as the dialects' queue takes it: the rate and queue limits read it."""
        request = HttpRequest()
        request.method = "POST"
        request.META["REMOTE_ADDR"] = self.address
        request.api_key = self.api_key
        request.user = self.user or AnonymousUser()
        return request

    def owner(self) -> dict:
        return {"owner": self.user, "owner_key": "", "client_ip": self.address or None}

    def sessions(self):
        if self.user is not None:
            return GenerationSession.objects.owned_by(Viewer(user_id=self.user.pk))
        return GenerationSession.objects.filter(owner__isnull=True, owner_key="")


def http_caller(headers) -> Caller | None:
    """The caller the /mcp route named in CALLER_HEADER (it refused everyone else)."""
    value = (headers or {}).get(CALLER_HEADER, "")
    kind, _, rest = value.partition(":")
    if kind == "key":
        key = ApiKey.objects.select_related("user").filter(pk=rest.partition("@")[0]).first()
        if key is not None:
            return Caller(user=key.user, api_key=key, address=rest.partition("@")[2])
    if kind == "anonymous":
        return Caller(address=rest)
    return None
