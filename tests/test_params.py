"""The parameter spec (`generator/params.py`) is the one place a parameter is defined: what is
still written by hand beside it (the pipeline's request) agrees with it, and every map from a
parameter's kind to a type is the spec's."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
from django import forms

from generator.forms import UPSCALER_FIELDS, GenerateForm
from generator.params import KINDS, PARAMETERS, REQUEST_NAMES
from generator.pipelines import GenerationRequest
from generator.web.json_body import JSON_TYPES, TYPE_NAMES, type_problem

pytestmark = pytest.mark.any_database

ROOT = Path(__file__).resolve().parent.parent
INPUT_IMAGES = {"init_image", "mask_image"}
"""What the worker adds to a request besides the parameters: the images, decoded."""


def test_every_request_parameter_is_a_field_of_the_pipelines_request_of_its_type_and_default():
    fields = {field.name: field for field in dataclasses.fields(GenerationRequest)}
    assert set(fields) - INPUT_IMAGES == set(REQUEST_NAMES)
    for parameter in PARAMETERS:
        if not parameter.request:
            continue
        field = fields[parameter.name]
        # ControlNet's units reach the pipeline built (their images loaded), as a tuple.
        wanted = tuple if parameter.kind == "units" else parameter.python_type
        assert field.type in (wanted, wanted.__name__), parameter
        if field.default is not dataclasses.MISSING:  # the worker passes every one anyway
            default = () if parameter.kind == "units" else parameter.default  # none: no units
            assert field.default == default, parameter.name


def test_the_form_the_json_checks_and_the_model_take_each_kind_from_the_spec():
    form = GenerateForm()
    for parameter in PARAMETERS:
        kind = KINDS[parameter.kind]
        if parameter.name in UPSCALER_FIELDS:  # the folders' files: a text field, a select
            assert type(form.fields[parameter.name]) is forms.CharField
            continue
        assert type(form.fields[parameter.name]) is kind.form_field, parameter.name
        assert JSON_TYPES[parameter.kind] == kind.json_types
        assert TYPE_NAMES[parameter.kind] == kind.json_name
    assert type_problem("float", 7) is None  # a float field takes a JSON integer
    assert type_problem("int", 7.5) == "Must be an integer."
    assert type_problem("int", True) == "Must be an integer."  # true is never a number
    assert type_problem("choice", 1) == "Must be a string."
    assert type_problem("image", 1) == "Must be a string (base64 image data)."


def test_guidance_scale_and_clip_skip_are_named_in_few_app_files():
    """Adding a parameter touches the spec, the pipeline that uses it and little else."""

    def files_naming(word: str) -> list[str]:
        found = subprocess.run(
            ["grep", "-rl", word, "generator", "sdsite", "templates", "static",
             "--include=*.py", "--include=*.html", "--include=*.js"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        return sorted(path for path in found if "migrations" not in path)

    # The spec, the pipeline's request that uses it, and ComfyUI's KSampler (its `cfg`).
    assert files_naming("guidance_scale") == [
        "generator/dialects/comfyui_nodes.py",
        "generator/params.py",
        "generator/pipelines/base.py",
    ]
    assert files_naming("clip_skip") == [
        "generator/params.py",
        "generator/pipelines/base.py",
        "generator/pipelines/prompt_embeds.py",
    ]
