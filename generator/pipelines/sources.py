"""Where a model named in SD_MODEL comes from: the demo, a local folder, or a hub id."""

from pathlib import Path

from . import demo

DEMO_MODEL = "demo"


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` understands."""
    if name == DEMO_MODEL:
        return str(demo.WEIGHTS)
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if name.startswith(("/", "./", "../", "~")):
        # A folder that is not there: say so, rather than let the hub lookup fail
        # with "couldn't connect to huggingface.co".
        raise FileNotFoundError(f"The model folder {name} does not exist on this worker.")
    # Anything else is a hub id such as "stabilityai/sd-turbo"; from_pretrained
    # downloads it once into the Hugging Face cache (HF_HOME).
    return name
