"""The checkpoint and VAE that requests without a key use (`POST /sdapi/v1/options` with API
auth off): one for everyone, as A1111's, kept in `$DATA_DIR/options.json` so that every web
process sees them."""

import json
import os
import tempfile
from pathlib import Path

from django.conf import settings

OPTIONS = ("sd_model_checkpoint", "sd_vae")


def _path() -> Path:
    return Path(settings.DATA_DIR) / "options.json"


def _read() -> dict:
    try:
        values = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def global_option(name: str) -> str | None:
    value = _read().get(name)
    return value if isinstance(value, str) and value else None


def global_model() -> str | None:
    return global_option("sd_model_checkpoint")


def set_global(name: str, value: str) -> None:
    """Set one option, keeping the others (a rename over the file: readers see either)."""
    values = {k: v for k, v in _read().items() if k in OPTIONS} | {name: value}
    target = _path()
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".options-")
    with os.fdopen(handle, "w") as out:
        json.dump(values, out)
    os.replace(staging, target)
