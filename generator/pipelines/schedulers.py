"""Samplers by their A1111 names, mapped to diffusers schedulers, by the model's family.

Both backends run diffusers' scheduler loop, so the same tables serve both. A
model's own scheduler (its `scheduler_config.json`) says its family: an SD-style
noise-prediction model may take any sampler of SCHEDULERS; a flow-matching model
(SD3, Flux) only the flow samplers; a distilled LCM model only LCM. Each sampler
is built from the model's own config, so its settings (shift, timestep spacing,
prediction type) carry over.
"""

import json
from pathlib import Path

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
FLOW_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
"""Flow-matching models (SD3, Flux): A1111 and Forge offer Euler for them."""
LCM_SCHEDULERS: dict[str, tuple[str, dict]] = {"LCM": ("LCMScheduler", {})}
"""Latent-consistency models (LCM distillations) need their own sampler."""

SCHEDULE_TYPES_SETTINGS: dict[str, dict] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
"""A1111's schedule types (1.9 and later) as settings of diffusers' schedulers; "Automatic"
keeps the sampler's and the model's own."""
SCHEDULE_TYPE_CHOICES = [(name, name) for name in SCHEDULE_TYPES_SETTINGS]

_SIGMAS = frozenset({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"})
SCHEDULER_SETTINGS: dict[str, frozenset[str]] = {
    "EulerDiscreteScheduler": _SIGMAS | {"timestep_spacing"},
    "EulerAncestralDiscreteScheduler": frozenset({"timestep_spacing"}),
    "DPMSolverMultistepScheduler": _SIGMAS | {"timestep_spacing"},
    "DDIMScheduler": frozenset({"timestep_spacing"}),
    "UniPCMultistepScheduler": _SIGMAS | {"timestep_spacing"},
    "LMSDiscreteScheduler": _SIGMAS | {"timestep_spacing"},
    "PNDMScheduler": frozenset({"timestep_spacing"}),
    "FlowMatchEulerDiscreteScheduler": _SIGMAS,
    "FlowMatchHeunDiscreteScheduler": frozenset(),
    "LCMScheduler": frozenset({"timestep_spacing"}),
}
"""Which of the schedule types' settings each scheduler takes (diffusers 0.37's
signatures; a test checks them against the installed diffusers). Written out so
that the web's form check never imports diffusers, and with it torch: seconds on
the first request and hundreds of MB in every web process."""

DEFAULT_SCHEDULER = "Euler"
ALL_SCHEDULERS = {**SCHEDULERS, **FLOW_SCHEDULERS, **LCM_SCHEDULERS}
SCHEDULER_CHOICES = [(name, name) for name in ALL_SCHEDULERS]


def family_samplers(scheduler_class: str | None) -> dict[str, tuple[str, dict]]:
    """The samplers a model whose own scheduler is `scheduler_class` may run."""
    if scheduler_class and scheduler_class.startswith("FlowMatch"):
        return FLOW_SCHEDULERS
    if scheduler_class == "LCMScheduler":
        return LCM_SCHEDULERS
    return SCHEDULERS


def default_sampler(scheduler_class: str | None) -> str:
    """The sampler a job of this model gets when none is asked for."""
    samplers = family_samplers(scheduler_class)
    return DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in samplers else next(iter(samplers))


def make_scheduler(name: str, model_config, schedule_type: str = "Automatic"):
    """A fresh scheduler `name` of the model's family, configured from its own config, with
    the schedule type's settings."""
    import diffusers

    samplers = family_samplers(model_config.get("_class_name"))
    try:
        class_name, overrides = samplers[name]
    except KeyError:
        raise ValueError(
            f"The sampler {name!r} does not fit this model (its scheduler is "
            f"{model_config.get('_class_name')}): use one of {', '.join(samplers)}."
        ) from None
    scheduler_class = getattr(diffusers, class_name)
    problem = schedule_type_problem(name, schedule_type, samplers)
    if problem:
        raise ValueError(problem)
    settings = SCHEDULE_TYPES_SETTINGS[schedule_type]
    return scheduler_class.from_config(model_config, **overrides, **settings)


def schedule_type_problem(sampler: str, schedule_type: str, samplers=SCHEDULERS) -> str | None:
    """Why the sampler (of the model family `samplers`) cannot take this schedule type."""
    settings = SCHEDULE_TYPES_SETTINGS.get(schedule_type)
    if settings is None:
        names = ", ".join(SCHEDULE_TYPES_SETTINGS)
        return f"Unknown schedule type {schedule_type!r}: use one of {names}."
    class_name, overrides = samplers.get(sampler, (None, {}))
    if class_name is None or not settings:
        return None
    if not SCHEDULER_SETTINGS[class_name].issuperset(settings) or (
        schedule_type != "Karras" and overrides.get("use_karras_sigmas")
    ):
        return f"The sampler {sampler} has no {schedule_type} schedule: choose Automatic."
    return None


def model_scheduler_class(model_folder: str | None) -> str | None:
    """The class of a model's own scheduler, read from its folder (None if unknown)."""
    if model_folder is None:
        return None
    try:
        config = json.loads(
            (Path(model_folder) / "scheduler" / "scheduler_config.json").read_text()
        )
    except (OSError, ValueError):
        return None
    return config.get("_class_name")


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
