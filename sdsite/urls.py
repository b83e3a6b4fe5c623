"""The root URLs: the admin, the site, the dialects (A1111 and its ControlNet, OpenAI,
ComfyUI), and images."""

from django.contrib import admin
from django.urls import include, path, re_path

from generator.web.media import media

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("generator.web.urls")),
    # Other tools' dialects: AUTOMATIC1111's and OpenAI's image APIs.
    path("sdapi/v1/", include("generator.dialects.a1111")),
    path("controlnet/", include("generator.dialects.controlnet")),
    path("v1/", include("generator.dialects.openai")),
    # ComfyUI's API under a path of its own (its /history is not the page's); its WebSocket
    # /comfyui/ws is served in front of Django (sdsite.asgi, dialects.comfyui_ws).
    path("comfyui/", include("generator.dialects.comfyui")),
    # Generated images are served by the app itself, DEBUG on or off, so the
    # one-command install needs no separate file server; SD_PRIVATE_MEDIA=1
    # serves each only to whoever may see its session (docs/deploy.md).
    re_path(r"^media/(?P<path>.*)$", media),
]
