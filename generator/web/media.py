"""The generated images, previews and inputs under /media/: open, or (SD_PRIVATE_MEDIA=1)
only to whoever may see their session, and to staff.

Open is the default, as in A1111 and ComfyUI: an image's URL is a long random
name, and webhooks and the A1111/OpenAI `url` answers hand it to other tools.
Private media suits a shared server where users must not see each other's images
even by a leaked URL; tools then fetch images with their API key.
"""

from django.conf import settings
from django.db.models import Q
from django.http import Http404
from django.views.static import serve

from ..models import GenerationSession
from ..ownership import viewer_of
from ..retention import FILE_FIELDS


def media(request, path: str):
    if settings.SD_PRIVATE_MEDIA and not may_see_file(request, path):
        raise Http404("No such file.")
    return serve(request, path, document_root=settings.MEDIA_ROOT)


def may_see_file(request, path: str) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    named = Q()
    for field in FILE_FIELDS:
        named |= Q(**{field: path})
    return GenerationSession.objects.visible_to(viewer_of(request)).filter(named).exists()
