"""A1111 prompts through both backends: weights, long prompts and BREAK reach the model as
embeddings, and the syntax itself never does (same seed, the same image or a different one)."""

import numpy as np
import pytest

from generator.pipelines import GenerationRequest, create_backend

pytestmark = pytest.mark.any_database

PROMPT = "a red circle on a blue background"
LONG = PROMPT + ", " + ", ".join(["plain"] * 80)  # past the 77-token window


@pytest.fixture(scope="module", params=["pytorch", "openvino"])
def backend(request):
    backend = create_backend(request.param, "demo", "cpu")
    backend.load(lambda phase: None)
    return backend


def pixels(backend, prompt, negative=""):
    request = GenerationRequest(prompt, negative, 6, 7.5, 128, 128, seed=11)
    image = backend.generate(request, lambda *a: True, lambda phase: None)
    return np.asarray(image).astype(int)


def test_weight_one_is_exactly_the_plain_prompt_and_other_weights_change_it(backend):
    plain = pixels(backend, PROMPT)
    assert (pixels(backend, "a (red circle:1.0) on a blue background") == plain).all()
    # Weighted "circle", not "red": the demo model draws the red saturated already, so
    # "(red:1.8)" moved its pixels by a mean of only 0.6 of 255, "(circle:1.8)" by 18.
    assert np.abs(pixels(backend, "a red (circle:1.8) on a blue background") - plain).mean() > 2
    assert np.abs(pixels(backend, "a red [[[circle]]] on a blue background") - plain).mean() > 2


def test_words_past_the_77th_token_change_the_image(backend):
    assert np.abs(pixels(backend, LONG + " green") - pixels(backend, LONG)).mean() > 0.5


def test_break_and_unbalanced_brackets_are_never_an_error(backend):
    if backend.__class__.__name__ != "TorchBackend":
        pytest.skip("text work, the same for both backends: once is enough")
    plain = pixels(backend, PROMPT)
    assert np.abs(pixels(backend, "a red circle BREAK on a blue background") - plain).mean() > 0
    for prompt in ["((a red circle", "a red circle)) on ]] blue", "(a:red:1.2) \\", "(x:.)"]:
        assert pixels(backend, prompt).shape == (128, 128, 3)


def test_a_long_negative_prompt_lines_up_with_a_short_prompt(backend):
    if backend.__class__.__name__ != "TorchBackend":
        pytest.skip("the chunk count is shared with the long prompt test above")
    assert pixels(backend, PROMPT, negative=LONG).shape == (128, 128, 3)
