"""A backend by its API name, with the libraries' own progress bars and advice kept quiet."""

import os

from .base import PipelineBackend


def quiet_libraries() -> None:
    """Keep the libraries' own progress bars and advice out of the worker's log."""
    # Read when diffusers is first imported, which already warns ("Multiple
    # distributions found for package optimum").
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def create_backend(name: str, model: str, device: str) -> PipelineBackend:
    """A not yet loaded backend by its API name (`pytorch` or `openvino`)."""
    quiet_libraries()
    if name == "pytorch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device)
    if name == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(model, device)
    raise ValueError(f"Unknown backend {name!r}: use pytorch or openvino.")
