"""The WSGI entry point, for servers without ASGI (the progress stream wants uvicorn)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsite.settings")

application = get_wsgi_application()
