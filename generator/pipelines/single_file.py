"""Loading a single-file checkpoint (A1111's `.safetensors` or `.ckpt`) offline.

diffusers' `from_single_file` converts the file's LDM layout to diffusers' components, shaped
by a diffusers config folder: the family's, shipped in `configs/<family>/` (JSON only), with the
CLIP tokenizer's `vocab.json` and `merges.txt` built once from the shipped BPE list
(`configs/bpe_simple_vocab_16e6.txt.gz`, CLIP's own) into SD_MODELS_DIR. A folder beside the
checkpoint named `<checkpoint>.config` (a diffusers model folder without weights) stands in for
the family's, for models of other shapes.

`.ckpt` files are pickles: they load only through `torch.load(weights_only=True)`, which
refuses any global that is not a tensor's, plus the few that real checkpoints hold (A1111's
safe unpickler allows the same), so a pickle that would run code is refused with its reason.
"""

import gzip
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from .checkpoints import Unusable, family_of, safetensors_header

CONFIGS = Path(__file__).resolve().parent / "configs"
BPE = CONFIGS / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) map of every byte to a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's tokenizer as its `SimpleTokenizer` builds it: the 256 byte characters, the same
    ending a word, one token per merge, then the two special tokens (49408 in all)."""
    lines = gzip.decompress(BPE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    characters = list(bytes_to_unicode().values())
    vocab = characters + [c + "</w>" for c in characters]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab)}, merges


def write_tokenizer_files(folder: Path) -> None:
    vocab, merges = clip_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@lru_cache(maxsize=16)
def config_folder(family: str) -> Path:
    """The family's diffusers config folder with its tokenizers' vocabularies, built once into
    SD_MODELS_DIR (atomically: workers may build it at the same time)."""
    shipped = CONFIGS / family
    if not (shipped / "model_index.json").is_file():
        raise Unusable(f"no configuration for the {family} family")
    target = Path(settings.MODELS_DIR) / "single-file-configs" / family
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    shutil.copytree(shipped, staging, dirs_exist_ok=True)
    for tokenizer in staging.glob("tokenizer*"):
        write_tokenizer_files(tokenizer)
    try:
        staging.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


class _LightningCheckpoint:
    """Stands in for pytorch_lightning's ModelCheckpoint, which training runs leave in a
    checkpoint's `callbacks` (A1111's safe unpickler does the same)."""

    def __setstate__(self, state):
        pass


def _allowed_globals() -> list:
    """What real SD checkpoints hold besides tensors, as A1111's `modules/safe.py` allows."""
    import _codecs

    import numpy

    allowed = [
        (_LightningCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        _codecs.encode,
        numpy.dtype,
        numpy.ndarray,
        set,
    ]
    multiarray = numpy._core.multiarray  # numpy 2; pickles name numpy.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar")]
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct")]
    allowed += [type(numpy.dtype(name)) for name in ("float32", "float64", "int64", "int32")]
    return allowed


def restricted_load(path: Path):
    """A `.ckpt`'s state dict through PyTorch's weights-only unpickler (memory-mapped); a
    pickle that names anything else is Unusable, and nothing in it runs."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise Unusable(f"refused: its pickle asks for {refused_global(exc)}") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise Unusable(f"cannot be read as a PyTorch checkpoint ({str(exc)[:200]})") from None
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise Unusable("not a checkpoint (its pickle holds no state dict)")
    return loaded


def refused_global(exc: Exception) -> str:
    """The global that PyTorch's unpickler refused, from its message ("Unsupported global:
    GLOBAL posix.system ..."), which is long and names torch's documentation."""
    text = str(exc)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        name = text.split(marker, 1)[1].split()[0]
        return f"{name}, which is not part of a model's weights (a pickle that runs code?)"
    first = next((line for line in text.splitlines() if line.strip()), "")
    return f"something outside a model's weights ({first[:200]})"


def checkpoint_family(path: Path) -> str:
    """The family from the file's keys (Unusable where none fits)."""
    if path.suffix.lower() == ".safetensors":
        family = family_of(safetensors_header(path))
    else:
        family = family_of(restricted_load(path))
    if family is None:
        raise Unusable("not a Stable Diffusion 1.x, 2.x or XL checkpoint (unknown tensor names)")
    return family


def sidecar_config(path: Path) -> Path | None:
    folder = path.with_name(path.name + ".config")
    return folder if (folder / "model_index.json").is_file() else None


def load_pipeline(path: Path, torch_dtype):
    """The checkpoint as a diffusers pipeline of its family's class, on the CPU."""
    import pickle

    import diffusers
    import torch

    family = checkpoint_family(path)
    config = sidecar_config(path) or config_folder(family)
    index = json.loads((config / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    try:
        # diffusers reads a `.ckpt` with torch.load(weights_only=True, mmap=True): the same
        # allow-list holds there, and a safetensors file is memory-mapped.
        with torch.serialization.safe_globals(_allowed_globals()):
            return pipeline_class.from_single_file(
                str(path), config=str(config), local_files_only=True, torch_dtype=torch_dtype
            )
    except pickle.UnpicklingError as exc:
        raise Unusable(f"refused: its pickle asks for {refused_global(exc)}") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise Unusable(f"does not fit the {family} family's shapes ({first})") from None


def is_single_file(source: str) -> bool:
    return os.path.isfile(source) and source.lower().endswith((".safetensors", ".ckpt"))
