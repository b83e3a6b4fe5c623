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
