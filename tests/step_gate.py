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


def follow_a_gated_job(server, start_worker, gate_file: Path, steps: int, **worker_env):
    """Queue a job, open its stream, then start a gated worker (SD_STEP_WRITE_INTERVAL=0:
    every step written) and follow the stream to its end: (its messages, the worker)."""
    import httpx

    from tests.sse_client import iter_events

    gate, worker, messages = StepGate(gate_file), None, []
    env = gated_worker_env(gate_file, SD_STEP_WRITE_INTERVAL=0, **worker_env)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        token = client.get("/").cookies["csrftoken"]
        queued = client.post(
            "/api/generate",
            json={"prompt": "a lighthouse", "steps": steps, "width": 64, "height": 64},
            headers={"X-CSRFToken": token, "Referer": server.url + "/"},
        )
        assert queued.status_code == 202, queued.text
        with client.stream("GET", queued.json()["progress_url"]) as stream:
            for event in iter_events(stream.iter_lines()):
                if not event.data:
                    continue
                messages.append(event.data)
                gate.saw(event.data)
                if event.data["type"] == "queued" and worker is None:  # the stream is open
                    worker = start_worker(**env)
    return messages, worker


def assert_every_step_once_with_its_phases(messages: list[dict], steps: int) -> None:
    """Step 0 when the worker took the job (starting), then each step once, in order; the
    phases in their order, each where it belongs among the steps, then the end."""
    kinds = [
        f"{m['type']} {m.get('current_step', m.get('phase', ''))}".strip()
        for m in messages
        if m["type"] != "preview"
    ]
    assert [m["current_step"] for m in messages if m["type"] == "progress"] == list(
        range(steps + 1)
    ), kinds
    assert all(m["total_steps"] == steps for m in messages if m["type"] == "progress")
    phases = [m["phase"] for m in messages if m["type"] == "phase"]
    assert phases == ["starting", "loading demo...", "denoising", "decoding", "saving"], kinds
    start = kinds.index("phase starting")
    assert kinds[start : start + 3] == ["phase starting", "progress 0", "phase loading demo..."]
    # Denoising comes with step 1, decoding with the last step, saving after it.
    assert kinds[kinds.index("progress 1") - 1] == "phase denoising", kinds
    assert kinds[-5:] == [
        f"progress {steps - 1}", "phase decoding", f"progress {steps}", "phase saving", "complete"
    ], kinds  # fmt: skip


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
            if args == ("loading demo...",):  # the claim wrote "starting": shown first
                wait_until_seen(phase_key("starting"))
            going = submit_call(writer, write, *args)
            if getattr(write, "__name__", "") == "record_phase":
                wait_until_seen(phase_key(args[0]))
            return going

        StepReporter.__call__ = gated_report
        ProgressWriter.submit_call = gated_submit_call
