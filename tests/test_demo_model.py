"""The shipped demo model draws what it is asked, through the worker's own backend.

Prompt following is checked with the benchmark's colour measure (bench/demo_model.py)
on fixed seeds, with margins: most, not all, of a handful of images.
"""

import pytest
from PIL import Image

from generator.images import blurred_mask
from generator.pipelines import GenerationRequest, create_backend, demo
from generator.pipelines.demo import world

pytestmark = pytest.mark.any_database

SCENES = [
    ("circle", "red", "blue"),
    ("square", "yellow", "purple"),
    ("triangle", "white", "green"),
    ("circle", "black", "orange"),
    ("square", "green", "white"),
    ("triangle", "blue", "yellow"),
]


@pytest.fixture(scope="module")
def backend():
    backend = create_backend("pytorch", "demo", "cpu")
    backend.load(lambda phase: None)
    return backend


def draw(backend, prompt, negative="", seed=0, steps=12, **inputs):
    request = GenerationRequest(prompt, negative, steps, 7.5, 128, 128, seed, **inputs)
    return backend.generate(request, lambda *a: True, lambda phase: None)


def test_it_draws_the_named_shape_colour_on_the_named_background(backend):
    followed = 0
    for seed, (shape, colour, background) in enumerate(SCENES):
        image = draw(backend, world.caption_of(shape, colour, background), seed=seed)
        assert image.size == (128, 128)
        read = world.read_scene(image)
        followed += read == {"centre": colour, "border": background}
    assert followed >= len(SCENES) - 1


def test_words_outside_the_vocabulary_are_ignored(backend):
    # Stray words cost the demo some adherence (docs/demo-model.md): 6 of these 8 seeds
    # followed the prompt when this was written, as all 8 did without the stray words.
    prompt = "masterpiece, a red circle on a blue background, 8k, zorblax 🦊"
    followed = sum(
        world.read_scene(draw(backend, prompt, seed=seed)) == {"centre": "red", "border": "blue"}
        for seed in range(8)
    )
    assert followed >= 5
    assert draw(backend, "quantum zebra", seed=3).size == (128, 128)  # still an image


def test_a_negative_prompt_keeps_its_colour_away(backend):
    red = sum(
        world.read_scene(draw(backend, "a circle", "red", seed=seed))["centre"] == "red"
        for seed in range(6)
    )
    assert red <= 1


def test_inpainting_turns_the_masked_area_to_the_prompt(backend):
    blue = Image.new("RGB", (128, 128), world.PALETTE["blue"])
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (40, 40, 88, 88))
    image = draw(
        backend,
        "a red square on a blue background",
        init_image=blue,
        mask_image=blurred_mask(mask, 4),
        strength=1.0,
    )
    inside = image.crop((48, 48, 80, 80))
    # The demo's red leans orange (docs/demo-model.md): a warm square where there was blue.
    assert world.share_of(inside, "red") + world.share_of(inside, "orange") > 0.5
    assert world.share_of(inside, "blue") < 0.2
    assert world.share_of(image.crop((0, 0, 24, 128)), "blue") > 0.95  # outside: the input


def test_the_vocabulary_is_one_token_a_word_and_other_words_are_letters():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(demo.WEIGHTS / "tokenizer")
    for word in world.WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]


def test_the_shipped_weights_are_small_fp16_safetensors():
    from safetensors import safe_open

    files = list(demo.WEIGHTS.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert sum(f.stat().st_size for f in files) < 20 * 1024 * 1024
    for path in files:
        with safe_open(path, "pt") as weights:
            name = next(iter(weights.keys()))
            assert str(weights.get_tensor(name).dtype) == "torch.float16"


def test_training_is_seeded_and_reproducible_in_one_run_or_two_passes(tmp_path):
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from generator.training import demo as train

    def plan(folder, refine_steps=2, decoder_steps=2):
        return train.Plan(
            vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=2, dataset=5, half_dataset=1,
            refine_steps=refine_steps, refine_rounds=2, decoder_steps=decoder_steps,
            decoder_batch=2,
            out=tmp_path / folder,
        )  # fmt: skip

    train.train(plan("a"))
    # A second run, pass by pass: the same weights, bit for bit.
    first_pass = plan("c", refine_steps=0, decoder_steps=0)
    train.train(first_pass)
    for round in (1, 2):
        train.refine(dataclasses.replace(first_pass, refine_steps=2), round=round)
    train.refine_decoder(dataclasses.replace(first_pass, decoder_steps=2))

    def weights(folder, part):
        return load_file(tmp_path / folder / part / "diffusion_pytorch_model.safetensors")

    for part in ("unet", "vae"):
        a, c = weights("a", part), weights("c", part)
        assert a.keys() == c.keys()
        assert all(torch.equal(a[key], c[key]) for key in a), part
    # The decoder pass changed the decoder, and only the decoder.
    first = plan("b", decoder_steps=0)
    train.train(first)
    before, after = weights("b", "vae"), weights("a", "vae")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


@pytest.mark.django_db
def test_the_page_says_what_the_demo_understands(client):
    page = client.get("/").content.decode()
    assert "circle, square, triangle" in page
    assert ", ".join(world.COLOURS) in page
    assert "a red circle on a blue background" in page
    assert "images are noise" not in page
