"""Shared start-up of the benchmarks: Django on a throwaway data folder, and the machine.

Run the benchmarks as modules from the repository root (`python -m bench.queue`):
run as scripts, bench/queue.py would shadow the standard library's `queue`.
"""

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def django_on_scratch_data(models_dir: str | None = None) -> Path:
    """Set up Django with a fresh DATA_DIR, migrate, and return DATA_DIR.

    The database is DATABASE_URL when set (bin/with-postgres gives a fresh
    cluster), else a new SQLite file in DATA_DIR.
    """
    sys.path.insert(0, str(ROOT))
    data_dir = Path(tempfile.mkdtemp(prefix="sdsite-bench-"))
    os.environ["DATA_DIR"] = str(data_dir)
    if models_dir:
        os.environ["SD_MODELS_DIR"] = models_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return data_dir


def machine_line(device: str | None = None) -> str:
    """The CPU, and the GPU where `device` (default: SD_DEVICE) is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    line = f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if (device or os.environ.get("SD_DEVICE", "cpu")).startswith("cuda"):
        line += f"; GPU: {gpu_line()}"
    return line


def gpu_line() -> str:
    """The GPU's name and driver, and torch's version, from nvidia-smi and the package's
    metadata: without initialising CUDA here, which a process that forks workers must not."""
    from importlib.metadata import version

    try:
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.splitlines()[0]
            .replace(", ", ", driver ")
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        gpu = "unknown (no nvidia-smi)"
    return f"{gpu}, torch {version('torch')}"
