"""A1111 prompt syntax: attention weights, BREAK, LoRA tags (pure text, no model)."""

import pytest

from generator.prompts import Fragment, extract_loras, parse_attention

pytestmark = pytest.mark.any_database  # text only: CI runs it once, on SQLite


def fragments(prompt):
    return [(f.text, round(f.weight, 6)) for f in parse_attention(prompt)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # A1111's own examples (modules/prompt_parser.py), weights as it computes them.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
                ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1),
            ],
        ),
        ("((word))", [("word", 1.21)]),
        ("[word]", [("word", 0.909091)]),
        ("(word:1.5)", [("word", 1.5)]),
        ("(word:1.0)", [("word", 1.0)]),
        # Unbalanced the other way, and weights outside brackets, are plain text.
        ("word) x]", [("word) x]", 1.0)]),
        ("word:1.5)", [("word:1.5)", 1.0)]),
        ("(word:.)", [("word:.)", 1.1)]),  # A1111 raises here; the text stays, never an error
        ("", [("", 1.0)]),
    ],
)  # fmt: skip
def test_attention_weights_as_a1111_reads_them(prompt, expected):
    assert fragments(prompt) == expected


def test_break_is_a_fragment_of_its_own():
    assert parse_attention("a cat BREAK (a dog)") == [
        Fragment("a cat", 1.0),
        Fragment("BREAK", -1.0),
        Fragment("a dog", 1.1),
    ]
    assert parse_attention("a cat BREAK (a dog)")[1].is_break
    assert fragments("BREAKFAST") == [("BREAKFAST", 1.0)]  # a word, not the keyword


def test_lora_tags_are_taken_out_with_their_weights():
    text, uses = extract_loras("a red circle <lora:demo-stripes:0.8>, <lora:other>")
    assert text == "a red circle , "
    assert [(u.name, u.weight) for u in uses] == [("demo-stripes", 0.8), ("other", 1.0)]
    assert extract_loras("no tags") == ("no tags", [])
