"""Worker processes forked from a parent that imported PyTorch and diffusers once.

A worker spends about 10 CPU seconds importing torch, diffusers, transformers and
peft before its first job; the suite starts dozens of them on a 2-core machine.
Here a multiprocessing forkserver imports those libraries once and forks each
worker from itself: each is still a separate process that runs `manage.py
runworker` from its own environment (Django is set up after the fork, from the
worker's own variables), gets its own signals and its own exit status. Only the
import time is shared. Tests of the command line itself (`make run`, the
Procfile) start workers with a plain `python manage.py runworker`.

Nothing in the forkserver runs a tensor operation before it forks, so no
thread pool is copied half-started into the children.
"""

import multiprocessing
import os
import signal
import subprocess
import sys

PRELOAD = ["tests.support.forked_preload"]
_context = None


def context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run(argv: list[str], env: dict, cwd: str, log_path: str) -> None:
    """In the forked child: the environment, the log, then the management command."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # multiprocessing ignores SIGINT in the forkserver; a worker takes Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = argv
    from django.core.management import execute_from_command_line

    execute_from_command_line(argv)
    sys.stdout.flush()
    sys.stderr.flush()


class ForkedPopen:
    """The part of subprocess.Popen's interface the tests use, over a forked process."""

    def __init__(self, argv: list[str], env: dict, cwd, log_path):
        self.args = argv
        self.process = context().Process(
            target=_run, args=(argv, env, str(cwd), str(log_path)), daemon=True
        )
        self.process.start()
        self.pid = self.process.pid
        self.returncode = None

    def poll(self):
        if self.returncode is None and not self.process.is_alive():
            self.returncode = self.process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
