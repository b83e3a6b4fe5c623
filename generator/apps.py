from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Image generation"

    def ready(self):
        # Signal receivers: anonymous generations pass to the user at login,
        # and a deleted session takes its files along.
        from . import files, ownership  # noqa: F401
