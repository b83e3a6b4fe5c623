"""The demo LoRA: "demo-swap", which swaps the shape's colour and the background's.

    python manage.py train_demo --lora      # writes loras/demo-swap.safetensors here
                                            # (generator/training/demo_lora.py trains it)

A LoRA (rank 8, on the UNet's attention) trained on top of the shipped demo model:
the captions stay as they are ("a red circle on a blue background") and the
pictures have the two colours swapped (a blue circle on red). So `<lora:demo-swap:1>`
visibly changes what the demo draws, `<lora:demo-swap:0.5>` half-way, and a fresh
machine has a LoRA to try, offline. Seeded; about two minutes on two CPU cores.
"""

from pathlib import Path

LORAS = Path(__file__).resolve().parent / "loras"
"""The LoRA shipped with the demo model (listed with those in SD_LORA_DIR)."""
NAME = "demo-swap"
BASE_MODEL = "sdsite-demo"
"""What the file's `ss_base_model_version` says (kohya's key): the model family it fits."""
