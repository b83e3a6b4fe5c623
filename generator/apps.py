"""The app's configuration: the signal receivers it connects when Django starts."""

from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Image generation"

    def ready(self):
        # Signal receivers: anonymous generations pass to the user at login,
        # a deleted session takes its files along, and the SQLite file is private.
        from django.db.backends.signals import connection_created

        from . import files, model_checks, ownership  # noqa: F401
        from .db import make_sqlite_files_private

        connection_created.connect(make_sqlite_files_private, dispatch_uid="sdsite-private-db")
