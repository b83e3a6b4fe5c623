"""The app's own settings, pointed at a throwaway data folder for the test run.

The demo model is kept between runs in var/test-models, so only the first run
builds (and exports) it.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="sdsite-test-"))
os.environ.setdefault(
    "SD_MODELS_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test-models")
)
# The suite queues many jobs from one browser: per-owner limits are off unless a
# test turns them on (tests/test_limits.py), in this process and the ones it starts.
os.environ.setdefault("SD_MAX_QUEUED_PER_OWNER", "0")
os.environ.setdefault("SD_RATE_LIMIT", "")
os.environ.setdefault("SD_MAX_COUNT", "8")
os.environ.setdefault("SD_MAX_STREAMS_PER_OWNER", "100000")  # the stream tests open fifty
# Nothing can come from a model hub here: fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sdsite.settings import *  # noqa: E402

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: the worker and web processes the tests start share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
