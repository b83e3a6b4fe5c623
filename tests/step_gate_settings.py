"""A gated worker's settings (tests/step_gate.py): the app's own, plus the gate."""

from sdsite.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.step_gate.StepGateConfig"]  # noqa: F405
