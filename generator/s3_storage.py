"""django-storages' S3 backend as sdsite keeps files in a bucket (SD_MEDIA_STORAGE=s3).

Short timeouts; every failure of the bucket is a `StorageUnavailable` with a short reason
(never botocore's text, URLs or keys), a missing object a FileNotFoundError, as on disk;
`url()` is the app's own `/media/...` address, whose owner check redirects to a
short-lived signed URL (`signed_url`), which nothing else hands out. Only `STORAGES` names
this module, so no process imports boto3 unless its files are in a bucket.
"""

import functools
import threading

from botocore import exceptions as boto
from botocore.config import Config
from django.conf import settings
from storages.backends.s3 import S3Storage

from .media_storage import StorageUnavailable, note_unavailable


def short_reason(exc: BaseException) -> str:
    """What went wrong with the bucket in a few words: no URL, key or botocore wording."""
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectionClosedError):
        return "cannot connect to the endpoint"
    if isinstance(exc, boto.ConnectTimeoutError | boto.ReadTimeoutError):
        return f"no answer within {settings.SD_S3_TIMEOUT:g} s"
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return "no credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code") or "error")
        return f"{code} (HTTP {status})" if status else code
    return type(exc).__name__


_session_lock = threading.Lock()


class _LockedSession:
    """A shared boto3 session whose `resource()` runs under the lock."""

    def __init__(self, session):
        self.session = session

    def resource(self, *args, **kwargs):
        with _session_lock:
            return self.session.resource(*args, **kwargs)


def _told(method):
    """Run a storage method with the bucket's failures as StorageUnavailable; a missing
    object stays FileNotFoundError, a refused name SuspiciousOperation."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except boto.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 and exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise FileNotFoundError("No such file in the media storage.") from None
            note_unavailable()
            raise StorageUnavailable(short_reason(exc)) from exc
        except boto.BotoCoreError as exc:
            note_unavailable()
            raise StorageUnavailable(short_reason(exc)) from exc

    return wrapper


class MediaS3Storage(S3Storage):
    """django-storages' S3Storage: short timeouts, told failures, the app's own URLs."""

    _shared_session = None

    def get_default_settings(self):
        defaults = super().get_default_settings()
        defaults["client_config"] = Config(
            connect_timeout=settings.SD_S3_TIMEOUT,
            read_timeout=settings.SD_S3_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
        )
        return defaults

    @_told
    def _open(self, name, mode="rb"):
        file = super()._open(name, mode)
        if "r" in mode:
            file.file  # noqa: B018 - read it now, so a failure is told here
        return file

    _save = _told(S3Storage._save)
    delete = _told(S3Storage.delete)
    exists = _told(S3Storage.exists)
    size = _told(S3Storage.size)
    listdir = _told(S3Storage.listdir)
    get_modified_time = _told(S3Storage.get_modified_time)

    def _create_session(self):
        """One boto3 session for the process: django-storages makes a connection per
        thread, and a new session per thread costs 0.5 to 1 s of CPU (its service models
        loaded again) each time a job's progress writer starts; from a shared session a
        connection takes about 30 ms. Sessions are not thread-safe: made under a lock."""
        with _session_lock:
            if self._shared_session is None:
                self._shared_session = super()._create_session()
            return _LockedSession(self._shared_session)

    def url(self, name, parameters=None, expire=None, http_method=None):
        """The app's own address of the file (/media/...), which checks who asks."""
        return settings.MEDIA_URL + name.lstrip("/")

    def signed_url(self, name: str) -> str:
        """A URL of the object itself, valid SD_S3_URL_SECONDS: only /media/ hands it out."""
        return super().url(name)

    @_told
    def objects(self) -> list[tuple[str, int, float]]:
        """(name, size, modified as Unix time) of every object under the prefix (listed
        whole here, so a failure midway is told as any other)."""
        prefix = f"{self.location}/" if self.location else ""
        return [
            (entry.key[len(prefix) :], entry.size, entry.last_modified.timestamp())
            for entry in self.bucket.objects.filter(Prefix=prefix)
        ]

    @_told
    def check(self) -> None:
        self.connection.meta.client.head_bucket(Bucket=self.bucket_name)
