"""Who owns a generation, and who may see it.

The owner is the logged-in user, or else the anonymous browser: its Django
session holds a random owner key. The key lives in the session's data, not in
its id, so it survives the new session id Django issues at login, when the
anonymous generations pass to the user. Sessions made outside the web (the
CLI, scripts) have no owner: anyone who has the id may look, as with an
unlisted link, but they show in nobody's history.
"""

import secrets
from dataclasses import dataclass
from importlib import import_module

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.signals import user_logged_in
from django.db.models import Q
from django.dispatch import receiver
from django.http import HttpRequest

from .addresses import client_ip

OWNER_KEY = "sdsite_owner"
ANONYMOUS_HISTORY_SECONDS = 365 * 24 * 3600
"""How long an anonymous browser keeps its history (Django's default session lasts two weeks)."""


@dataclass(frozen=True)
class Viewer:
    user_id: int | None = None
    owner_key: str | None = None

    def owns(self, owner_id, owner_key) -> bool:
        return (owner_id is not None and owner_id == self.user_id) or bool(
            owner_key and owner_key == self.owner_key
        )

    def holder(self) -> str:
        """Who this viewer is, for per-owner counts ("" for a stranger)."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return f"browser:{self.owner_key}" if self.owner_key else ""

    def can_see(self, owner_id, owner_key) -> bool:
        return (owner_id is None and not owner_key) or self.owns(owner_id, owner_key)

    def own_sessions(self) -> Q:
        """The filter for this viewer's own generations (matches nothing for a stranger)."""
        mine = Q(pk__in=[])
        if self.user_id is not None:
            mine |= Q(owner_id=self.user_id)
        if self.owner_key:
            mine |= Q(owner_key=self.owner_key)
        return mine

    def visible_sessions(self) -> Q:
        return self.own_sessions() | Q(owner__isnull=True, owner_key="")


def viewer_of(request) -> Viewer:
    user = getattr(request, "user", None)
    session = getattr(request, "session", None)
    return Viewer(
        user.pk if user is not None and user.is_authenticated else None,
        session.get(OWNER_KEY) if session is not None else None,
    )


def owner_fields(request) -> dict:
    """The owner of a generation this request creates; gives the browser a key on first use."""
    address = client_ip(request) or None
    if getattr(request, "api_key", None) is not None:  # a tool with a key: its user, no cookie
        return {"owner": request.user, "owner_key": "", "client_ip": address}
    key = request.session.get(OWNER_KEY)
    if not key:
        key = request.session[OWNER_KEY] = secrets.token_urlsafe(24)
        request.session.set_expiry(ANONYMOUS_HISTORY_SECONDS)
    user = request.user
    owner = user if user.is_authenticated else None
    return {"owner": owner, "owner_key": key, "client_ip": address}


def save_browser_session(request) -> None:
    """Save the browser's session (its new owner key) now, in the caller's transaction: the
    jobs it owns and the key that owns them are committed together, or neither is."""
    browser_session = getattr(request, "session", None)
    if (
        getattr(request, "api_key", None) is None
        and browser_session is not None
        and browser_session.modified
    ):
        browser_session.save()


def viewer_from_browser_session(cookie_key: str | None) -> Viewer:
    """The viewer behind a browser session's cookie, for routes outside Django's middleware."""
    if not cookie_key:
        return Viewer()
    store = import_module(settings.SESSION_ENGINE).SessionStore(cookie_key)
    request = HttpRequest()
    request.session = store
    # get_user checks the session's auth hash, as the middleware would.
    user = get_user(request)
    return Viewer(user.pk if user.is_authenticated else None, store.get(OWNER_KEY))


def viewers_from_browser_sessions(cookie_keys) -> dict:
    """{browser session's cookie key: Viewer} for many cookies at once (streams opening
    together): one query with the database session engine; a signed-in user's cookie still
    gets the full check of `viewer_from_browser_session` (its auth hash)."""
    from django.contrib.auth import SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
    from django.utils import timezone

    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if not issubclass(store_class, DatabaseStore):
        return {key: viewer_from_browser_session(key) for key in cookie_keys}
    rows = store_class.get_model_class().objects.filter(
        session_key__in=[key for key in cookie_keys if key], expire_date__gt=timezone.now()
    )
    decoder = store_class()
    data = {
        key: decoder.decode(text) for key, text in rows.values_list("session_key", "session_data")
    }
    viewers = {}
    for key in cookie_keys:
        found = data.get(key, {})
        if SESSION_KEY in found:
            viewers[key] = viewer_from_browser_session(key)
        else:
            viewers[key] = Viewer(None, found.get(OWNER_KEY))
    return viewers


@receiver(user_logged_in, dispatch_uid="sdsite-adopt-anonymous-generations")
def adopt_anonymous_generations(sender, request, user, **kwargs):
    from .models import GenerationSession

    key = request.session.get(OWNER_KEY) if request is not None else None
    if key:
        GenerationSession.objects.filter(owner__isnull=True, owner_key=key).update(owner=user)
