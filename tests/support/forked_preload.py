"""What the worker forkserver (support/forked.py) imports once: the libraries, never Django."""

import diffusers  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from diffusers import (  # noqa: F401
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    StableDiffusionPipeline,
)
