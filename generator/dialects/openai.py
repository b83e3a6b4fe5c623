"""OpenAI's images API (`/v1/images/generations`, `edits`, `variations`, `/v1/models`), for
n8n, Open WebUI, LibreChat and the `openai` packages.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so its clients raise their usual exceptions. `quality`, `style`, `user` and
other fields sdsite has no use for are ignored. The model names clients hard-code
(`dall-e-2`, `dall-e-3`, `gpt-image-*`) are served by SD_OPENAI_MODEL_MAP's model, or
the default one.

An edit is inpainting: OpenAI's mask repaints where it is transparent (its alpha is
0), sdsite's where it is white, so the mask's alpha becomes sdsite's mask; without a
mask, an image with transparent pixels is its own mask (as DALL-E 2 does), an opaque
one is image to image. A variation is image to image with the prompt its image's
metadata carries (one sdsite or A1111 made), else a plain one. Of several
images (`image[]`, GPT Image's references) the first is edited: sdsite's models take
one. Uploads are checked in bytes and pixels before decoding (images.open_upload).
"""

import re
import time
from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from PIL import Image, ImageOps

from ..images import as_png, open_upload, output_size
from ..metadata import MetadataTooLarge, read_parameters
from ..models import Status
from ..params import PARAMETERS
from ..services import default_size
from ..web.api_errors import openai_error_body
from ..web.json_body import BodyError, load_object, type_problem
from .common import image_base64, queue, require_key
from .common import wait_for_sessions as wait

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")  # int() refuses past 4,300 digits
FIELDS = {
    "width": "size",
    "height": "size",
    "count": "n",
    "init_image": "image",
    "mask_image": "mask",
}
"""sdsite's field names in OpenAI's terms, for the `param` of an error."""
KINDS = {
    "prompt": "text",
    "model": "text",
    "size": "text",
    "response_format": "text",
    "n": "int",
    "callback_url": "text",
    "quality": "text",
    "style": "text",
    "user": "text",
    "stream": "bool",
}
"""The JSON kind of each field (json_body.JSON_TYPES); others are ignored, as documented."""
EXTRA = {p.name: p.kind for p in PARAMETERS if p.name not in ("prompt", "model", "width", "height")}
"""sdsite's own parameters that OpenAI has no field for (steps, seed, negative_prompt...),
taken by their spec names (the openai client's `extra_body`) and checked by the form."""

ALIASES = ("dall-e-2", "dall-e-3", "gpt-image-1")
"""OpenAI's model names that clients hard-code; any `gpt-image-*` is taken too."""
VARIATION_STRENGTH = 0.6
"""How far a variation moves from its image (img2img's strength; OpenAI names none)."""
VARIATION_PROMPT = "a detailed, high quality picture"
"""A variation's prompt when the image carries none in its metadata (OpenAI takes none)."""

error_body = openai_error_body


def invalid(message: str, param: str | None = None, status: int = 400) -> JsonResponse:
    return JsonResponse(error_body(message, param), status=status)


keyed = require_key(lambda message: error_body(message, code="invalid_api_key"))


def model_aliases() -> list[str]:
    return list(dict.fromkeys([*ALIASES, *settings.SD_OPENAI_MODEL_MAP]))


def served_by(model: str) -> str | None:
    """The sdsite model that serves an OpenAI model name, or None for a name unknown here."""
    if model in settings.SD_MODELS:
        return model
    if model in settings.SD_OPENAI_MODEL_MAP:
        return settings.SD_OPENAI_MODEL_MAP[model]
    if model in ALIASES or model.startswith("gpt-image-"):
        return settings.SD_MODEL
    return None


def default_format(model: str | None) -> str:
    """GPT Image answers base64 unless told; DALL-E (and sdsite's own names) a URL."""
    return "b64_json" if (model or "").startswith("gpt-image-") else "url"


def options(
    body: dict, prompt_required: bool = True, form: bool = False
) -> tuple[dict, JsonResponse | None]:
    """The fields of a request, JSON or a form's (`form`: OpenAI's own already typed, the
    spec's left as text for the form), as sdsite's form data with `count` and
    `response_format`, or the error to answer."""
    for field, kind in (KINDS | ({} if form else EXTRA)).items():
        value = body.get(field)
        if value is not None and (problem := type_problem(kind, value)):
            return {}, invalid(f"{field}: {problem}", field)
    if prompt_required and not body.get("prompt"):
        return {}, invalid("prompt: a prompt is required.", "prompt")
    if body.get("stream"):
        return {}, invalid("stream: streamed images are not offered here.", "stream")
    # callback_url: sdsite's webhook (the openai client sends it through extra_body).
    data = {"prompt": body.get("prompt") or "", "callback_url": body.get("callback_url") or ""}
    data |= {name: body[name] for name in EXTRA if body.get(name) is not None}
    model = body.get("model")
    if model:
        data["model"] = served_by(model)
        if data["model"] is None:
            message = f"The model {model[:200]!r} does not exist: see GET /v1/models."
            return {}, invalid(message, "model", 404)
    size = body.get("size")
    if size and size != "auto":
        match = SIZE.match(size)
        if not match:
            return {}, invalid("size must be WIDTHxHEIGHT, e.g. 512x512.", "size")
        data["width"], data["height"] = (int(side) for side in match.groups())
    if body.get("response_format") not in (None, "url", "b64_json"):
        return {}, invalid("response_format must be url or b64_json.", "response_format")
    n = body.get("n")
    if n is not None and not 1 <= n <= settings.SD_MAX_COUNT:
        return {}, invalid(f"n: Must be from 1 to {settings.SD_MAX_COUNT}.", "n")
    response_format = body.get("response_format") or default_format(model)
    return data | {"count": n or 1, "response_format": response_format}, None


def read(request) -> tuple[dict, JsonResponse | None]:
    """A JSON request's fields (images/generations)."""
    try:
        body = load_object(request.body)
    except BodyError as problem:
        return {}, invalid(problem.message, problem.field)
    return options(body)


def form_fields(request) -> tuple[dict, JsonResponse | None]:
    """A multipart request's text fields, typed as their JSON would be (`n` an integer,
    `stream` a boolean); empty ones are absent."""
    fields = [*KINDS, *EXTRA]
    body = {field: request.POST[field] for field in fields if request.POST.get(field, "") != ""}
    if "n" in body:
        if not body["n"].strip().isdigit() or len(body["n"]) > 6:
            return {}, invalid("n: Must be a whole number.", "n")
        body["n"] = int(body["n"])
    if "stream" in body:
        body["stream"] = body["stream"].strip().lower() == "true"
    return body, None


def opened(upload, field: str) -> Image.Image:
    """An upload decoded after its bytes and pixels were checked, or ValidationError."""
    if upload is None:
        raise ValidationError(f"Send an image file in {field}.")
    return ImageOps.exif_transpose(open_upload(upload))


def repaint_mask(image: Image.Image) -> Image.Image | None:
    """sdsite's mask (white: repaint) of an image whose transparent pixels OpenAI repaints;
    None when it has no alpha channel."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0)


def as_upload(image: Image.Image, field: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(f"{field}.png", as_png(image), content_type="image/png")


def image_inputs(request, data: dict, edit: bool) -> dict:
    """The form's files (init_image, mask_image) of an edit or a variation, at the size
    asked (else the image's own, fitted to the model), or ValidationError naming the field
    (as its `code`) in OpenAI's terms."""
    uploads = request.FILES.getlist("image") + request.FILES.getlist("image[]")
    try:
        image = opened(uploads[0] if uploads else None, "image")
    except ValidationError as problem:
        raise ValidationError(problem.messages[0], code="image") from None
    mask = None
    if edit and request.FILES.get("mask") is not None:
        try:
            mask = repaint_mask(opened(request.FILES["mask"], "mask"))
        except ValidationError as problem:
            raise ValidationError(problem.messages[0], code="mask") from None
        if mask is None:
            raise ValidationError(
                "The mask needs an alpha channel: its transparent area is repainted.",
                code="mask",
            )
    elif edit:
        mask = repaint_mask(image)
        if mask is not None and not mask.getbbox():
            mask = None  # opaque throughout: image to image
    if "width" not in data:
        model_size = default_size(data.get("model") or settings.SD_MODEL)
        data["width"], data["height"] = output_size(image, model_size)
    size = (data["width"], data["height"])
    files = {"init_image": as_upload(image.convert("RGB").resize(size), "init_image")}
    if mask is not None:
        files["mask_image"] = as_upload(mask.resize(size), "mask_image")
        data.setdefault("strength", 1.0)  # the transparent area is drawn anew
    elif not edit:
        data.setdefault("strength", VARIATION_STRENGTH)
        data["prompt"] = data.get("prompt") or prompt_of(image)
    return files


def prompt_of(image: Image.Image) -> str:
    """The prompt an image's metadata carries (one sdsite or A1111 made), else a plain one."""
    try:
        _, parameters = read_parameters(image)
    except MetadataTooLarge:
        parameters = {}
    prompt = parameters.get("prompt")
    return prompt if isinstance(prompt, str) and prompt.strip() else VARIATION_PROMPT


def accept(request, reader: Callable = read, edit: bool | None = None):
    """Read, check and queue a request, off the event loop: (sessions, options, error).
    `edit`: None for a generation, True for an edit, False for a variation."""
    data, refused = reader(request)
    if refused:
        return [], data, refused
    if edit is not None:
        data, refused = options(data, prompt_required=edit, form=True)
        if refused:
            return [], data, refused
    count = data.pop("count")
    response_format = data.pop("response_format")
    files = {}
    if edit is not None:
        try:
            files = image_inputs(request, data, edit)
        except ValidationError as problem:
            return [], data, invalid(problem.messages[0], problem.code)
    sessions, errors = queue(request, data, files, count)
    if errors:
        field, messages = next(iter(errors.items()))
        refused = invalid(f"{field}: {' '.join(messages)}", FIELDS.get(field, field))
    return sessions, {"response_format": response_format}, refused


async def answer(request, sessions, response_format: str) -> JsonResponse:
    """The finished sessions' images in OpenAI's shape, once all have ended."""
    finished = await wait([session.pk for session in sessions])
    done = [session for session in finished if session.status == Status.COMPLETED]
    if not done:
        reasons = "; ".join(s.error or s.status for s in finished)
        return JsonResponse(
            {"error": {"message": f"Generation failed: {reasons}", "type": "server_error",
                       "param": None, "code": None}},
            status=500,
        )  # fmt: skip
    items = []
    for session in done:
        if response_format == "b64_json":
            item = {"b64_json": await sync_to_async(image_base64)(session)}
        else:
            item = {"url": request.build_absolute_uri(session.image.url)}
        items.append(item | {"revised_prompt": session.prompt})
    return JsonResponse({"created": int(time.time()), "data": items})


def images_view(reader: Callable = read, edit: bool | None = None):
    """A POST route of images/: generations (JSON), edits and variations (multipart)."""

    @csrf_exempt
    @require_POST
    @keyed
    async def view(request):
        sessions, options_, refused = await sync_to_async(accept)(request, reader, edit)
        return refused or await answer(request, sessions, options_["response_format"])

    return view


generations = images_view()
edits = images_view(form_fields, edit=True)
variations = images_view(form_fields, edit=False)


@require_GET
@keyed
def models(request):
    """The served models, then the OpenAI names clients hard-code, in OpenAI's list shape."""
    names = list(dict.fromkeys([*settings.SD_MODELS, *model_aliases()]))
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "sdsite"}
                for name in names
            ],
        }
    )


urlpatterns = [
    path("images/generations", generations),
    path("images/edits", edits),
    path("images/variations", variations),
    path("models", models),
]
