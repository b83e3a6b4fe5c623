"""Samplers by their A1111 names, mapped to diffusers schedulers.

Both backends run diffusers' scheduler loop, so the same table serves both.
"""

SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
}
DEFAULT_SCHEDULER = "Euler"
SCHEDULER_CHOICES = [(name, name) for name in SCHEDULERS]


def make_scheduler(name: str, model_config):
    """A fresh scheduler `name`, configured from the model's own scheduler config."""
    import diffusers

    try:
        class_name, overrides = SCHEDULERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}."
        ) from None
    return getattr(diffusers, class_name).from_config(model_config, **overrides)


SCHEDULE_TYPES = ("Karras",)
"""A1111's schedule types (1.9 and later) that a sampler name here may end with."""


def a1111_sampler(name: str) -> tuple[str, str | None]:
    """("DPM++ 2M", "Karras") for "DPM++ 2M Karras": A1111 1.9 writes them apart."""
    for schedule_type in SCHEDULE_TYPES:
        if name.endswith(f" {schedule_type}"):
            return name[: -len(schedule_type) - 1], schedule_type
    return name, None


def from_a1111(sampler: str, schedule_type: str | None = None) -> str | None:
    """The sampler named here for A1111's sampler and schedule type (None if none fits)."""
    for candidate in (f"{sampler} {schedule_type}", sampler) if schedule_type else (sampler,):
        if candidate in SCHEDULERS:
            return candidate
    return None
