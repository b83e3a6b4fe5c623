"""Request bodies in JSON, decoded strictly, and the JSON type of each field: one rule for
sdsite's API and the A1111 and OpenAI dialects.

Python's `json` accepts what JSON does not: `NaN` and `Infinity`, numbers that overflow a float
(`1e400` is `inf`), and `"\\ud800"`, a lone surrogate that no UTF-8 text can hold. It nests as
deep as the interpreter's recursion limit. `load_object` refuses all of them, and a body that
is not an object, with a `BodyError` that names the field where the problem is. It is linear
in the body's size (the body itself is bounded by SD_MAX_BODY_MB) and runs off the event loop
in the async views (the dialects call it in `sync_to_async`).
"""

import json
import math

from ..params import KINDS

MAX_DEPTH = 16
"""The deepest nesting a request body may have: no field of any dialect nests more than 3."""
MAX_INTEGER = 2**63 - 1
"""The largest integer a body may carry, in either sign: past it no field means anything, and
a float field would overflow converting it."""


class BodyError(ValueError):
    """A body that is not valid JSON, or not what a request may carry: `field` is the
    top-level field at fault (None: the body as a whole), `path` the full location."""

    def __init__(self, message: str, path: tuple = ()):
        super().__init__(message)
        self.message = message
        self.path = path

    @property
    def field(self) -> str | None:
        return self.path[0] if self.path and isinstance(self.path[0], str) else None


class _Refused:
    """A number JSON may not carry here (NaN, an infinity, an overflowing float or integer),
    held in place until the walk finds which field it is in."""

    def __init__(self, text: str):
        self.text = text if len(text) <= 24 else f"{text[:20]}...({len(text)} characters)"


def _float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _Refused(text)


def _int(text: str):
    # The decoder hands over at most a body's worth of digits; Python's own limit on
    # int() (4300 digits) raises ValueError past it, which is refused as invalid JSON.
    if len(text.lstrip("-")) > 19:
        return _Refused(text)
    value = int(text)
    return value if abs(value) <= MAX_INTEGER else _Refused(text)


def _where(path: tuple) -> str:
    """`init_images[0]`, `override_settings.sd_model_checkpoint`: a field's path as text."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _at(path: tuple, message: str) -> str:
    """The message as its field hears it; for a part within a field, where in it."""
    return f"{_where(path)}: {message}" if len(path) > 1 else message


def check_text(value: str) -> bool:
    """Whether a string is Unicode text UTF-8 can hold (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(value) -> None:
    """Refuse what the decoder let through, naming where: iterative, so linear and flat."""
    pending = [((), value)]
    while pending:
        path, item = pending.pop()
        if len(path) > MAX_DEPTH:
            raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.", path[:1])
        if isinstance(item, _Refused):
            raise BodyError(
                _at(
                    path,
                    f"{item.text} is not a number this API takes (NaN, infinities and "
                    f"integers past 2**63 are refused).",
                ),
                path,
            )
        if isinstance(item, str) and not check_text(item):
            raise BodyError(_at(path, "Not valid Unicode text."), path)
        if isinstance(item, dict):
            for key, child in item.items():
                if not check_text(key):
                    raise BodyError("A field's name is not valid Unicode text.", path)
                pending.append(((*path, key), child))
        elif isinstance(item, list):
            pending.extend(((*path, index), child) for index, child in enumerate(item))


def load(raw: bytes | str):
    """The JSON value of a body, refusing what JSON itself refuses and what no field takes."""
    try:
        value = json.loads(raw, parse_float=_float, parse_int=_int, parse_constant=_Refused)
    except RecursionError:
        raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError):
        raise BodyError("The body is not valid JSON.") from None
    _walk(value)
    return value


def load_object(raw: bytes | str) -> dict:
    """A body that must be a JSON object (an empty body is the empty object)."""
    value = load(raw or b"{}")
    if not isinstance(value, dict):
        raise BodyError(f"The body must be a JSON object, not {type_name(value)}.")
    return value


OWN_KINDS = {
    "image": ((str,), "a string (base64 image data)"),
    "list": ((list,), "a list"),
    "object": ((dict,), "an object"),
}
"""The dialects' own kinds of field, besides the parameters' (params.KINDS)."""
JSON_TYPES = {name: kind.json_types for name, kind in KINDS.items()} | {
    name: types for name, (types, _) in OWN_KINDS.items()
}
"""The JSON type of each kind of field: a parameter's `kind` (params.py) or a dialect's own."""
TYPE_NAMES = {name: kind.json_name for name, kind in KINDS.items()} | {
    name: words for name, (_, words) in OWN_KINDS.items()
}


def type_name(value) -> str:
    """What a JSON value is, in the words of the messages."""
    for python_type, name in (
        (bool, "true or false"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "an object"),
    ):
        if isinstance(value, python_type):
            return name
    return "null"


def type_problem(kind: str, value) -> str | None:
    """Why `value` cannot be a field of this kind, or None. `true` is never a number."""
    if (isinstance(value, bool) and kind != "bool") or not isinstance(value, JSON_TYPES[kind]):
        return f"Must be {TYPE_NAMES[kind]}."
    return None
