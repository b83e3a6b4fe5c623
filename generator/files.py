"""A session's files (image, last preview, inputs) go with its row, whoever deletes it.

The input images of a batch are one file shared by its sessions: they go with
the last session that uses them.
"""

import contextlib
import logging

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .media_storage import StorageUnavailable, is_remote
from .models import GenerationSession

logger = logging.getLogger(__name__)


def file_names(session: GenerationSession) -> list[str]:
    names = [f.name for f in (session.image, session.preview) if f]
    for field in ("init_image", "mask_image"):
        name = getattr(session, field).name
        if name and not GenerationSession.objects.filter(**{field: name}).exists():
            names.append(name)
    # ControlNet units' images are shared by the sessions of one batch only.
    shared = bool(session.batch_id) and (
        GenerationSession.objects.filter(batch_id=session.batch_id).exists()
    )
    if not shared:
        names += [unit["image"] for unit in session.controlnet or () if unit.get("image")]
    return names


def delete_files(names) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except StorageUnavailable as exc:  # the row is gone: prune --orphans finds the file
            logger.warning("Could not delete %s: %s", name, exc)


@receiver(post_delete, sender=GenerationSession, dispatch_uid="sdsite-delete-session-files")
def delete_session_files(sender, instance, **kwargs):
    names = file_names(instance)
    if names:
        # Only once the delete is committed: a rolled-back delete keeps its files.
        transaction.on_commit(lambda: delete_files(names))


def save_whole(name: str, data: bytes) -> str:
    """Store `data` under `name` (or the free name next to it); nothing is left if it fails.

    A full disk mid-write would otherwise leave a truncated file that no row names. In a
    bucket, the object exists only once its PUT succeeded (S3 writes are whole); the caller
    names it in a row only after this returns.
    """
    if is_remote():  # a PUT stores the whole object or nothing
        return default_storage.save(name, ContentFile(data))
    final = default_storage.get_available_name(name)
    try:
        return default_storage.save(final, ContentFile(data))
    except BaseException:
        with contextlib.suppress(Exception):
            default_storage.delete(final)
        raise
