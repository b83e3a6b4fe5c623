"""API keys: how other tools (A1111 and OpenAI clients, scripts) act for a user.

A key is shown once, when it is made; the database keeps its SHA-256 and its
first characters (to list and revoke it). A request carries it as
`Authorization: Bearer <key>`, or as HTTP Basic with the username and the key
as password (Open WebUI and webuiapi send Basic). On the API routes (`/api/`,
`/sdapi/`, `/v1/`, `/comfyui/`) such a request acts for the key's user and needs no CSRF token:
a cross-site page cannot set that header. Everywhere else (the admin, /ops, the
pages) a key opens nothing.
"""

import base64
import binascii
import contextlib
import functools
import hashlib
import secrets

from django.contrib.auth import get_user_model
from django.db import OperationalError
from django.utils import timezone

from .models import SHOWN_KEY_CHARACTERS as SHOWN
from .models import ApiKey

PREFIX = "sdk_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key(user, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `user`: (the row, the key itself, which is not stored)."""
    key = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(user=user, name=name, prefix=key[:SHOWN], digest=digest(key))
    return row, key


def key_in_header(header: str) -> str | None:
    """The key an Authorization header's value carries, if any."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def authenticate(request) -> ApiKey | None:
    """The active key the request carries, or None; marks it used."""
    return authenticate_header(request.headers.get("Authorization", ""))


def authenticate_header(header: str) -> ApiKey | None:
    """The active key an Authorization header's value carries, or None; marks it used."""
    key = key_in_header(header)
    if not key:
        return None
    row = ApiKey.objects.active().select_related("user").filter(digest=digest(key)).first()
    if row is not None:
        now = timezone.now()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            # Bookkeeping: a busy database skips it rather than fail the request.
            with contextlib.suppress(OperationalError):
                ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)
    return row


def users_of_keys(keys) -> dict:
    """{key: its user's id} for the active ones among `keys`, in one query (the progress
    streams' lean route, which reads many at once and writes nothing)."""
    digests = {digest(key): key for key in keys}
    rows = ApiKey.objects.active().filter(digest__in=list(digests))
    return {digests[found]: user_id for found, user_id in rows.values_list("digest", "user_id")}


def user_for(username: str):
    """The user named so, made (without a password) if there is none."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


# And /mcp, whose ASGI route checks its key itself.
API_PREFIXES = ("/api/", "/sdapi/", "/v1/", "/comfyui/", "/controlnet/")
"""The routes a key opens. Never the admin, /ops or any page of the browser session: there
a key header is ignored (a login is asked for, CSRF applies)."""


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class ApiKeyMiddleware:
    """On the API routes, a request with a valid key acts for the key's user, without a
    CSRF token; elsewhere a key is ignored.

    Put after AuthenticationMiddleware. A request with an Authorization header
    that holds no valid key stays anonymous; the dialects answer it 401.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.api_key = None
        if "Authorization" in request.headers and is_api_path(request.path_info):
            row = authenticate(request)
            if row is not None:
                request.api_key = row
                request.user = row.user
                request.auser = functools.partial(_key_user, row.user)  # async views ask this
                request._dont_enforce_csrf_checks = True
        return self.get_response(request)


async def _key_user(user):
    return user
