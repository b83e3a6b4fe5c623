"""SESSION_ENGINE: Django's database sessions, written at most once per change.

`POST /api/generate` saves the browser's session (its owner key) in the same
transaction as the jobs it owns, so both are kept or neither is; SessionMiddleware
then finds it saved and does not write it a second time after the view (a write
that a full disk could refuse after the jobs were committed).
"""

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore


class SessionStore(DatabaseStore):
    def __init__(self, session_key=None):
        super().__init__(session_key)
        self._saved_state = None

    def _state(self) -> tuple:
        return self.session_key, self.serializer().dumps(self._session)

    def save(self, must_create=False):
        if not must_create and self.session_key is not None and self._saved_state == self._state():
            return
        super().save(must_create=must_create)
        self._saved_state = self._state()
