"""A worker that waits, after each step and phase it hands to its writer, until the test
has seen that step or phase on the progress stream: the real worker, writer, hub and
stream, in lock-step, so a test can demand every step exactly once without racing the
hub's ticks (which by design send only the newest of the steps between two reads).

Start a worker with `gated_worker_env(gate_file)`; the test appends a line per message
it saw (`StepGate.saw`). A key that never comes is waited for GATE_SECONDS, then the
worker goes on (the test then fails on what it saw, not on a hang).
"""

import os
import sys
import time
from pathlib import Path

from django.apps import AppConfig

GATE_SECONDS = 30.0


def gated_worker_env(gate_file: Path, **env) -> dict:
    gate_file.touch()
    return {
        "DJANGO_SETTINGS_MODULE": "tests.step_gate_settings",
        "SD_TEST_STEP_GATE": str(gate_file),
        **env,
    }


def step_key(step: int) -> str:
    return f"step {step}"


def phase_key(phase: str) -> str:
    return f"phase {phase}"


class StepGate:
    """The test's side: says what the stream showed."""

    def __init__(self, gate_file: Path):
        self.file = gate_file

    def saw(self, message: dict) -> None:
        if message["type"] == "progress":
            self._append(step_key(message["current_step"]))
        elif message["type"] == "phase":
            self._append(phase_key(message["phase"]))

    def _append(self, key: str) -> None:
        with self.file.open("a") as file:
            file.write(key + "\n")


def wait_until_seen(key: str) -> None:
    """The worker's side: wait until the test wrote `key` (polling: the file is the only
    channel between the two processes)."""
    path = Path(os.environ["SD_TEST_STEP_GATE"])
    deadline = time.monotonic() + GATE_SECONDS
    while key not in path.read_text().splitlines():
        if time.monotonic() > deadline:
            sys.stderr.write(f"step gate: {key!r} not seen in {GATE_SECONDS} s, going on\n")
            return
        time.sleep(0.01)


class StepGateConfig(AppConfig):
    """Installed only in a gated worker's settings: wraps the step reporter and the
    writer's phase calls with the wait."""

    name = "tests.step_gate"
    label = "step_gate"

    def ready(self):
        from generator.worker.step_reporter import ProgressWriter, StepReporter

        report, submit_call = StepReporter.__call__, ProgressWriter.submit_call

        def gated_report(reporter, step, total, latents=None):
            going = report(reporter, step, total, latents)
            wait_until_seen(step_key(step))
            return going

        def gated_submit_call(writer, write, *args):
            going = submit_call(writer, write, *args)
            if getattr(write, "__name__", "") == "record_phase":
                wait_until_seen(phase_key(args[0]))
            return going

        StepReporter.__call__ = gated_report
        ProgressWriter.submit_call = gated_submit_call
