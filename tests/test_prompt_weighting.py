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


@pytest.fixture(scope="module")
def pipe():
    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    return backend.pipe


def towards(pipe, prompt: str, word: str) -> float:
    """The cosine similarity of the prompt's whole conditioning (its rows' mean) to the
    word's plain embedding (its row in the unweighted prompt), through the app's own
    prompt embedding code."""
    import torch

    from generator.pipelines.prompt_embeds import chunks_of, prompt_embeddings

    plain_prompt = PROMPT
    ids = chunks_of(pipe.tokenizer, plain_prompt)[0].ids
    (word_id,) = pipe.tokenizer(word, add_special_tokens=False).input_ids
    row = 1 + ids.index(word_id)  # after the start token
    word_embedding = prompt_embeddings(pipe, plain_prompt, "")["prompt_embeds"][0, row]
    conditioning = prompt_embeddings(pipe, prompt, "")["prompt_embeds"][0].mean(dim=0)
    return torch.nn.functional.cosine_similarity(conditioning, word_embedding, dim=0).item()


def test_a_weight_above_one_moves_the_conditioning_towards_the_word_and_below_away(pipe):
    plain = towards(pipe, PROMPT, "circle")
    assert towards(pipe, "a red (circle:1.0) on a blue background", "circle") == plain
    stronger = towards(pipe, "a red (circle:1.5) on a blue background", "circle")
    weaker = towards(pipe, "a red (circle:0.5) on a blue background", "circle")
    assert weaker < plain < stronger, (weaker, plain, stronger)
    # The brackets' weights point the same ways: ( ) is 1.1, [ ] is 1 / 1.1.
    assert towards(pipe, "a red (circle) on a blue background", "circle") > plain
    assert towards(pipe, "a red [circle] on a blue background", "circle") < plain
    # Weighting another word moves the conditioning away from this one.
    assert towards(pipe, "a red circle on a (blue:1.5) background", "circle") < plain
