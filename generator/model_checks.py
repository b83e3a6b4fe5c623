"""A bad SD_MODELS entry (a typo, a name split by a comma) is one line in `manage.py check`
and every command's start (runworker, migrate), never a traceback that stops a server."""

from django.core import checks


@checks.register()
def sd_models_entries(app_configs=None, **kwargs):
    from .pipelines.sources import sd_models_problems

    return [checks.Warning(problem, id="sdsite.W032") for problem in sd_models_problems()]
