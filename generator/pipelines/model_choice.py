"""The checkpoint that requests without a key use (`POST /sdapi/v1/options` with API auth
off): one for everyone, as A1111's, kept in `$DATA_DIR/options.json` so that every web process
sees it."""

import json
import os
import tempfile
from pathlib import Path

from django.conf import settings


def _path() -> Path:
    return Path(settings.DATA_DIR) / "options.json"


def global_model() -> str | None:
    try:
        value = json.loads(_path().read_text()).get("sd_model_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def set_global(model: str) -> None:
    target = _path()
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".options-")
    with os.fdopen(handle, "w") as out:
        json.dump({"sd_model_checkpoint": model}, out)
    os.replace(staging, target)
