"""Real processes for the tests: a uvicorn web server and runworker workers."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from tests.support.forked import ForkedPopen

ROOT = Path(__file__).resolve().parent.parent.parent


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message: str = ""):
    """Poll `condition` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or condition}")
        time.sleep(interval)


def database_url() -> str:
    """The URL of the database the tests run on (the test database, not the real one)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    host = db["HOST"] or "localhost"
    if host.startswith("/"):
        return (
            f"postgres://{db['USER']}:{db['PASSWORD']}@/{db['NAME']}?host={host}&port={db['PORT']}"
        )
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{host}:{db['PORT']}/{db['NAME']}"


def process_env(**overrides) -> dict:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="sdsite.settings",
        DATABASE_URL=database_url(),
        DATA_DIR=str(settings.DATA_DIR),
        SD_MODELS_DIR=str(settings.MODELS_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    def __init__(self, args, env, log_path: Path, preexec_fn=None, forked: bool = False):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        if forked:  # a management command, forked from a parent with the libraries imported
            self.popen = ForkedPopen(["manage.py", *args], env, ROOT, log_path)
            return
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class WebServer(Process):
    """uvicorn as deployed (the Procfile's protocol and flags); `file_limit`: its `ulimit -n`;
    `proxy_headers`: leave uvicorn's own X-Forwarded-For reading on, as uvicorn's default is."""

    def __init__(
        self, tmp_path: Path, file_limit: int | None = None, proxy_headers: bool = False, **env
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "uvicorn", "sdsite.asgi:application"]
        args += [
            "--http",
            "generator.web.connections:GuardedHttpProtocol",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--timeout-graceful-shutdown",
            "1",
        ]
        if not proxy_headers:
            args.append("--no-proxy-headers")

        def limit_files():
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

        super().__init__(
            args,
            process_env(**env),
            tmp_path / f"web-{self.port}.log",
            preexec_fn=limit_files if file_limit else None,
        )
        wait_for(self._ready, timeout=60, message=f"the web server on port {self.port}")

    def _ready(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"web server exited:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def server_and_worker(tmp_path: Path, django_db_blocker, **worker_env):
    """One web server and one worker, for a module whose tests' rows come and go under them
    (a module-scoped fixture yields from this)."""
    with django_db_blocker.unblock():
        web, worker = WebServer(tmp_path), WorkerProcess(tmp_path, **worker_env)
    try:
        yield web
    finally:
        worker.stop()
        web.stop()


class WorkerProcess(Process):
    count = 0

    def __init__(self, tmp_path: Path, *extra_args, **env):
        WorkerProcess.count += 1
        args = ["runworker", "--poll-interval", "0.05", *extra_args]
        log = tmp_path / f"worker-{WorkerProcess.count}.log"
        env = process_env(**env)
        # CUDA does not survive a fork from a process that has touched it, and the
        # forkserver imports torch, diffusers and peft: a GPU worker starts afresh.
        if env.get("SD_DEVICE", "cpu").startswith("cuda"):
            super().__init__([sys.executable, "manage.py", *args], env, log)
        else:
            super().__init__(args, env, log, forked=True)


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresCluster:
    """A throwaway PostgreSQL cluster of a test's own, to stop and start (bin/with-postgres's
    steps). Skips the test where the server binaries are missing."""

    def __init__(self, folder: Path):
        import pytest

        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"no PostgreSQL server binaries in {PG_BIN}")
        self.dir = Path(tempfile.mkdtemp(prefix="sdsite-pg-test."))
        self.as_owner = []
        if os.getuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.start()
        self._run("createdb", "-h", str(self.dir), "-U", "postgres", "sdsite")
        self.url = f"postgres://postgres@{str(self.dir).replace('/', '%2F')}/sdsite"

    def migrate(self):
        """Apply every migration to the cluster's database, as `make run` would."""
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=process_env(DATABASE_URL=self.url),
            check=True,
            capture_output=True,
        )

    def _run(self, tool: str, *args):
        subprocess.run([*self.as_owner, str(PG_BIN / tool), *args], check=True, capture_output=True)

    def start(self):
        options = f"-c listen_addresses='' -k {self.dir} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            f"{self.dir}/data",
            "-l",
            f"{self.dir}/log",
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self):
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "-w", "stop")

    def remove(self):
        subprocess.run(
            [
                *self.as_owner,
                str(PG_BIN / "pg_ctl"),
                "-D",
                f"{self.dir}/data",
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


class RecordedWrites:
    """The progress writes of the jobs this process runs: (step, total) and phases, in order.

    Steps are written by each job's ProgressWriter thread, on a connection of its own
    that Django's query capture does not see; this wraps the ClaimedJob methods that
    write them (calling through) instead."""

    def __init__(self):
        self.steps: list[tuple[int, int]] = []
        self.phases: list[str] = []

    def __enter__(self):
        from generator.worker.claims import ClaimedJob

        self.originals = ClaimedJob.record_step, ClaimedJob.record_phase
        record_step, record_phase = self.originals
        recorded = self

        def step(job, step, total, **fields):
            written = record_step(job, step, total, **fields)
            recorded.steps.append((step, total))
            recorded._phase("decoding" if step >= total else "denoising")
            return written

        def phase(job, name):
            recorded._phase(name)
            return record_phase(job, name)

        ClaimedJob.record_step, ClaimedJob.record_phase = step, phase
        return self

    def _phase(self, name: str) -> None:
        if name and (not self.phases or self.phases[-1] != name):
            self.phases.append(name)

    def __exit__(self, *exc):
        from generator.worker.claims import ClaimedJob

        ClaimedJob.record_step, ClaimedJob.record_phase = self.originals


NGINX_BIN = Path(os.environ.get("NGINX_BIN", "/usr/sbin/nginx"))
DOCUMENTED_UPSTREAM = "127.0.0.1:8000"


def documented_nginx_block() -> str:
    """The nginx server block's body that docs/deploy.md gives, exactly as written there."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## nginx in front", 1)[1]
    return section.split("```nginx\n", 1)[1].split("```", 1)[0]


class Nginx(Process):
    """nginx in front of `upstream` (a WebServer), on 127.0.0.1, with docs/deploy.md's block as
    its server's body: only the documented upstream address is replaced."""

    def __init__(self, tmp_path: Path, upstream: "WebServer"):
        folder = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp_path))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        block = documented_nginx_block()
        assert block.count(DOCUMENTED_UPSTREAM) >= 2, "the documented block changed its upstream"
        block = block.replace(DOCUMENTED_UPSTREAM, f"127.0.0.1:{upstream.port}")
        temp_paths = "\n".join(
            f"    {kind}_temp_path {folder}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = folder / "nginx.conf"
        config.write_text(
            f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log;\n"
            + ("user root;\n" if os.getuid() == 0 else "")
            + "events { worker_connections 512; }\n"
            f"http {{\n    access_log off;\n{temp_paths}\n"
            f"    server {{\n        listen 127.0.0.1:{self.port};\n{block}    }}\n}}\n"
        )
        args = [str(NGINX_BIN), "-p", str(folder), "-c", str(config), "-e", f"{folder}/error.log"]
        super().__init__(args, dict(os.environ), folder / "nginx.log")
        self.error_log = folder / "error.log"
        wait_for(self._ready, timeout=30, message=f"nginx on port {self.port}")

    def _ready(self):
        if self.popen.poll() is not None:
            errors = self.error_log.read_text() if self.error_log.exists() else ""
            raise AssertionError(f"nginx exited:\n{self.log()}\n{errors}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def visitor(url: str, address: str, **options) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any of 127/8 on Linux's lo)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=url, transport=transport, timeout=30, **options)
