"""Prompts as AUTOMATIC1111 users write them: attention weights, BREAK and `<lora:...>`.

Pure text work, shared by the web (to check a prompt's LoRA before anything is
queued) and the worker (to build the text embeddings, `pipelines.prompt_embeds`).

The attention syntax, as A1111 reads it:
- `(text)` multiplies the attention to `text` by 1.1, `((text))` by 1.21, `[text]` divides it
  by 1.1, `(text:1.5)` sets 1.5 (times the brackets around it);
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters;
- a bracket left open weights everything after it, as if closed at the end; a closing
  bracket with nothing open, or `:1.5)` outside brackets, is plain text;
- `BREAK` (in capitals, as a word) starts a new 75-token chunk.
"""

import re
from dataclasses import dataclass

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = "BREAK"

_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]            # an escaped bracket or backslash
    | \\                    # a lone backslash
    | \(                    # open: 1.1
    | \[                    # open: 1/1.1
    | :\s*([+-]?[.\d]+)\s*\)  # close with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+         # text
    | :                     # a colon that is not a weight
    """,
    re.VERBOSE,
)
_LORA = re.compile(r"<lora:([^:>]++)(?::([+-]?[.\d]++))?(?::[^>]*+)?>")
"""A `<lora:name:weight>` tag (a third field, if any, is skipped). Searched only up to the
prompt's last `>`: every tag ends at the first `>` after it, so no attempt scans past the next
`>`, where without that bound every unclosed `<lora:x:` would scan to the end (quadratic)."""

PROMPT_LIMIT = 16 * 1024
"""The longest prompt these parsers read, in characters (PromptTooLong past it): sixteen times
the longest the form and the APIs take (`params.PARAMETERS`' 1,000), so that only text that
never passed them is refused."""

MAX_NESTING = 32
"""Brackets of one kind nested deeper than this weigh nothing more (the 33rd open `(` and
the `)` that closes it are dropped, as the others are): no prompt means 1.1 ** 33, and each
bracket reweighs all it holds, so the work stays linear in the prompt (times this)."""


class PromptTooLong(ValueError):
    """A prompt longer than PROMPT_LIMIT, refused before it is parsed."""

    def __init__(self, length: int):
        super().__init__(f"The prompt is {length:,} characters; at most {PROMPT_LIMIT:,} are read.")


def check_length(prompt: str) -> None:
    if len(prompt) > PROMPT_LIMIT:
        raise PromptTooLong(len(prompt))


def is_word(character: str) -> bool:
    """A character of `\\w` (what `\\b` tells apart)."""
    return character.isalnum() or character == "_"


def split_breaks(text: str) -> list[str]:
    """`text` split at each `BREAK` word and the whitespace around it, as
    `re.split(r"\\s*\\bBREAK\\b\\s*", text)` splits it, in linear time (that pattern
    retries every position of a long run of spaces, each scanning to the run's end)."""
    pieces = []
    start = search = 0
    while (found := text.find(BREAK, search)) >= 0:
        end = found + len(BREAK)
        if (found and is_word(text[found - 1])) or (end < len(text) and is_word(text[end])):
            search = found + 1
            continue
        before = text[start:found]
        pieces.append(before.rstrip())
        start = search = _SPACES.match(text, end).end()
    pieces.append(text[start:])
    return pieces


_SPACES = re.compile(r"\s*+")


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float

    @property
    def is_break(self) -> bool:
        return self.text == BREAK and self.weight < 0


def parse_attention(prompt: str) -> list[Fragment]:
    """The prompt as (text, weight) fragments, neighbours of equal weight merged; a BREAK is
    a fragment of its own with weight -1. PromptTooLong past PROMPT_LIMIT."""
    parts: list[list] = []  # [text, weight], weights multiplied as brackets close
    round_open: list[int] = []
    square_open: list[int] = []

    def weigh(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    check_length(prompt)
    opened = {"(": round_open, "[": square_open}
    dropped = {"(": 0, "[": 0}  # brackets opened past MAX_NESTING, closed without weight

    for match in _TOKENS.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        closes = token == ")" or (weight is not None and is_number(weight))
        closing = "(" if closes else "[" if token == "]" else None
        if token.startswith("\\"):  # escaped: the character itself (a lone one is dropped)
            parts.append([token[1:], 1.0])
        elif token in ("(", "[") and len(opened[token]) >= MAX_NESTING:
            dropped[token] += 1
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif closing and dropped[closing]:
            dropped[closing] -= 1
        elif weight is not None and round_open and is_number(weight):
            weigh(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            weigh(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            weigh(square_open.pop(), SQUARE)
        else:
            for index, piece in enumerate(split_breaks(token)):
                if index:
                    parts.append([BREAK, -1.0])
                if piece:
                    parts.append([piece, 1.0])
    for start in round_open:
        weigh(start, ROUND)
    for start in square_open:
        weigh(start, SQUARE)

    merged: list[list] = []
    for text, weight in parts:
        if not text:
            continue
        if merged and merged[-1][1] == weight and weight >= 0:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [Fragment(text, weight) for text, weight in merged] or [Fragment("", 1.0)]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class LoraUse:
    name: str
    weight: float


def extract_loras(prompt: str) -> tuple[str, list[LoraUse]]:
    """The prompt without its `<lora:name:weight>` tags, and the LoRA they name (weight 1 when
    left out; A1111's third field, a separate text-encoder weight, is not read).
    PromptTooLong past PROMPT_LIMIT."""
    check_length(prompt)
    tagged = prompt.rfind(">") + 1  # no tag ends past the last `>`
    uses = [
        LoraUse(match.group(1).strip(), float(match.group(2)) if match.group(2) else 1.0)
        for match in _LORA.finditer(prompt, 0, tagged)
        if match.group(2) is None or is_number(match.group(2))
    ]
    return _LORA.sub("", prompt[:tagged]) + prompt[tagged:], uses


MAX_WEIGHT = 10.0
"""The largest attention weight (after brackets multiply) and LoRA weight, in either sign.

A1111 bounds neither (its UI steps weights by 0.1 around 1); past ±10 a weight only saturates
the embeddings (1e40 is past float32's largest number).
The form refuses a prompt with one (`weight_problem`) rather than clamp it silently."""


def weight_problem(prompt: str) -> str | None:
    """Why a prompt's attention or LoRA weights are out of bounds, or None."""
    text, uses = extract_loras(prompt)
    for use in uses:
        if abs(use.weight) > MAX_WEIGHT:
            return (
                f"<lora:{use.name}:{use.weight:g}>: a LoRA weight must be from "
                f"{-MAX_WEIGHT:g} to {MAX_WEIGHT:g}."
            )
    for fragment in parse_attention(text):
        if not fragment.is_break and abs(fragment.weight) > MAX_WEIGHT:
            return (
                f"{fragment.text.strip()[:40]!r} has attention weight {fragment.weight:.3g} "
                f"(brackets multiply): weights must be from {-MAX_WEIGHT:g} to {MAX_WEIGHT:g}."
            )
    return None
