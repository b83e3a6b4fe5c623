"""Everything that knows about diffusers lives in this package.

The rest of sdsite sees a `PipelineBackend` with `load()` and
`generate(request, on_step, on_phase, on_start)`, where `on_step(step, total,
latents)` returns False to stop the run, and `generate_batch(requests, ...)` for
requests that differ only in their prompts and seeds (one call, an image each).
"""

from .base import GenerationInterrupted, GenerationRequest, PipelineBackend
from .registry import create_backend

__all__ = ["GenerationInterrupted", "GenerationRequest", "PipelineBackend", "create_backend"]
