"""The generated images, previews and inputs under /media/: open, or (SD_PRIVATE_MEDIA=1)
only to whoever may see their session, and to staff.

Open is the default, as in A1111 and ComfyUI: an image's URL is a long random
name, and webhooks and the A1111/OpenAI `url` answers hand it to other tools.
Private media suits a shared server where users must not see each other's images
even by a leaked URL; tools then fetch images with their API key.

With the files in a bucket (SD_MEDIA_STORAGE=s3) the address stays this one: after the
same check it redirects to a URL of the object signed for a few minutes.
"""

import logging

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.core.files.storage import default_storage
from django.db.models import Q
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.views.static import serve

from ..media_storage import StorageUnavailable, is_remote
from ..models import GenerationSession
from ..ownership import viewer_of
from ..retention import FILE_FIELDS
from .api_errors import RETRY_AFTER_SECONDS

logger = logging.getLogger(__name__)


def media(request, path: str):
    if settings.SD_PRIVATE_MEDIA and not may_see_file(request, path):
        raise Http404("No such file.")
    if is_remote():
        return from_bucket(path)
    return serve(request, path, document_root=settings.MEDIA_ROOT)


def from_bucket(path: str):
    """A redirect to the object, by a URL signed for SD_S3_URL_SECONDS (objects are never
    public); 404 for none, 503 with Retry-After while the bucket is away."""
    try:
        if not default_storage.exists(path):
            raise Http404("No such file.")
    except SuspiciousOperation:
        raise Http404("No such file.") from None
    except StorageUnavailable as exc:
        logger.warning("Could not serve %s: %s", path, exc)
        response = HttpResponse(
            "The image storage is unavailable: try again in a few seconds.\n",
            status=503,
            content_type="text/plain",
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    response = HttpResponseRedirect(default_storage.signed_url(path))
    response["Cache-Control"] = "private, no-store"  # the signed URL expires
    return response


def may_see_file(request, path: str) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    named = Q()
    for field in FILE_FIELDS:
        named |= Q(**{field: path})
    return GenerationSession.objects.visible_to(viewer_of(request)).filter(named).exists()
