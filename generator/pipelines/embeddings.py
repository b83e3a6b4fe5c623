"""Textual-inversion embeddings in SD_EMBEDDINGS_DIR, used when their name is in a prompt.

An embedding fits a family by its vectors' width: SD 1.x's 768 (`emb_params`, A1111's own
format and kohya's), SD 2.x's 1024, SDXL's pair (`clip_l` 768 and `clip_g` 1280). Only
`.safetensors` embeddings are read (from their header, without loading them); `.pt` ones are
pickles, listed as skipped.
"""

import json
from pathlib import Path

from . import checkpoints

WIDTHS = {"sd1": {"emb_params": 768}, "sd2": {"emb_params": 1024}}
WIDTHS["sdxl"] = {"clip_l": 768, "clip_g": 1280}


def shapes(file) -> dict[str, list]:
    """{tensor name: shape} of a safetensors embedding; {} for anything else."""
    if file.problem or not file.name.lower().endswith(".safetensors"):
        return {}
    header = checkpoints.safetensors_header(file.path, file.size)
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def widths_of_model(model: str) -> dict[str, int] | None:
    """The text encoders' widths an embedding must have for this model (None: unknown)."""
    file = checkpoints.lookup(model) if model.endswith((".safetensors", ".ckpt")) else None
    if file is not None:
        from .single_file import sidecar_config

        folder = sidecar_config(file.path)
        if folder is None:  # the family's shapes
            family = (file.family or "").split("-")[0]
            return None if file.family == "sdxl-refiner" else WIDTHS.get(family)
    else:
        from .sources import local_folder

        folder = local_folder(model)
    if folder is None:
        return None
    try:
        first = json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"]
    except (OSError, ValueError, KeyError):
        return None
    second = folder / "text_encoder_2" / "config.json"
    if second.is_file():
        try:
            width = json.loads(second.read_text())["hidden_size"]
        except (OSError, ValueError, KeyError):
            return None
        return {"clip_l": first, "clip_g": width}
    return {"emb_params": first}


def fits(file, widths: dict[str, int] | None) -> bool:
    found = shapes(file)
    if not widths or not found:
        return False
    if set(widths) <= set(found):
        return all(found[k][-1] == w for k, w in widths.items())
    # One-encoder embeddings under another key (`string_to_param.*`, kohya's `emb_params`).
    if len(widths) == 1 and len(found) == 1:
        [shape] = found.values()
        return shape[-1] == next(iter(widths.values()))
    return False


def vectors(file) -> int | None:
    found = shapes(file)
    return next(iter(found.values()))[0] if found else None


def listing(model: str) -> dict:
    """A1111's `GET /embeddings`: `loaded` (those that fit the model) and `skipped`."""
    widths = widths_of_model(model)
    answer: dict = {"loaded": {}, "skipped": {}}
    for file in checkpoints.scan("embedding"):
        found = shapes(file)
        entry = {
            "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
            "shape": next(iter(found.values()))[-1] if found else None,
            "vectors": vectors(file),
        }  # fmt: skip
        answer["loaded" if fits(file, widths) else "skipped"][file.stem] = entry
    return answer


def used_in(prompt: str, negative: str, model: str) -> list:
    """The embeddings that the prompts name (as whole words) and that fit the model."""
    import re

    widths = widths_of_model(model)
    text = f"{prompt}\n{negative}"
    return [
        file
        for file in checkpoints.scan("embedding")
        if re.search(rf"(?<![\w-]){re.escape(file.stem)}(?![\w-])", text) and fits(file, widths)
    ]


def load_into(pipe, file) -> None:
    """Load one embedding into the pipeline's tokenizers and text encoders as its name."""
    from safetensors.torch import load_file

    tensors = load_file(str(file.path))
    token = Path(file.name).stem
    if "clip_g" in tensors:
        pipe.load_textual_inversion(
            tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
        )  # fmt: skip
        pipe.load_textual_inversion(
            tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )  # fmt: skip
        return
    [vectors_] = tensors.values()
    pipe.load_textual_inversion(vectors_, token=token)


def hashes_text(prompt: str, negative: str, model: str) -> str:
    """A1111's `TI hashes` value (`name: sha256[:12], ...`, the name without `:` and `,`, as
    A1111 writes it), "" when the prompts use none."""
    from .model_hashes import sha256_now

    return ", ".join(
        f"{alias(file.stem)}: {sha256_now(file.path, file.size, file.mtime_ns)[:12]}"
        for file in used_in(prompt, negative, model)
    )


def alias(name: str) -> str:
    """A name as A1111's hashes fields carry it: without the `:` and `,` that separate them."""
    return name.replace(":", "").replace(",", "")
