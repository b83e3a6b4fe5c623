"""A1111's hashes of the model files, computed in the background and remembered.

A model file's sha256 takes about 1.5 s per 2 GB: never in a request. `known_sha256(file)`
answers from the cache (None until known) and queues the file for the one background thread
that hashes files one at a time, in the web process or the worker, whichever asks. Hashes are
kept in `$DATA_DIR/model-hashes.json` by path, size and mtime, so a file that changes is hashed
again and the others never are.
"""

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_idle = threading.Condition(_lock)
_cache: dict[str, dict] | None = None
_queued: set[str] = set()
_work: "queue.Queue[tuple[str, int, int]]" = queue.Queue()
_thread: threading.Thread | None = None


def cache_path() -> Path:
    return Path(settings.DATA_DIR) / "model-hashes.json"


def _load() -> dict[str, dict]:
    global _cache
    if _cache is None:
        try:
            loaded = json.loads(cache_path().read_text())
            _cache = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _cache = {}
    return _cache


def _key(path, size: int, mtime_ns: int) -> str:
    return f"{path}|{size}|{mtime_ns}"


def cached(path, size: int, mtime_ns: int) -> str | None:
    with _lock:
        entry = _load().get(str(path))
        if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns:
            return entry.get("sha256")
    return None


def known_sha256(file) -> str | None:
    """The file's sha256 if known; else None, and it is hashed in the background."""
    if file.problem is not None:
        return None
    found = cached(file.path, file.size, file.mtime_ns)
    if found is None:
        queue_hash(file.path, file.size, file.mtime_ns)
    return found


def queue_hash(path, size: int, mtime_ns: int) -> None:
    global _thread
    key = _key(path, size, mtime_ns)
    with _lock:
        if key in _queued:
            return
        _queued.add(key)
        _work.put((str(path), size, mtime_ns))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_hash_forever, name="model-hashes", daemon=True)
            _thread.start()


def sha256_now(path, size: int, mtime_ns: int) -> str:
    """Hash the file here and now (the worker, which reads the file anyway), and keep it."""
    found = cached(path, size, mtime_ns)
    if found is None:
        found = _sha256(path)
        _store(path, size, mtime_ns, found)
    return found


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _store(path, size: int, mtime_ns: int, sha256: str) -> None:
    with _lock:
        cache = _load()
        # Another process may have hashed other files: keep theirs too.
        try:
            on_disk = json.loads(cache_path().read_text())
            if isinstance(on_disk, dict):
                cache.update({k: v for k, v in on_disk.items() if k not in cache})
        except (OSError, ValueError):
            pass
        cache[str(path)] = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256}
        target = cache_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".model-hashes-")
        with os.fdopen(handle, "w") as out:
            json.dump(cache, out)
        os.replace(staging, target)


def _hash_forever() -> None:
    while True:
        path, size, mtime_ns = _work.get()
        try:
            if cached(path, size, mtime_ns) is None:
                _store(path, size, mtime_ns, _sha256(path))
        except OSError as exc:
            log.warning("Could not hash %s: %s", Path(path).name, exc.strerror or exc)
        finally:
            with _lock:
                _queued.discard(_key(path, size, mtime_ns))
                _idle.notify_all()
            _work.task_done()


def wait_idle(timeout: float) -> bool:
    """For tests and benches: True once every queued file is hashed (within `timeout`)."""
    with _lock:
        return _idle.wait_for(lambda: not _queued, timeout)
