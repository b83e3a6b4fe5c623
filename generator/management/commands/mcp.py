"""`manage.py mcp --user USER`: the MCP server over stdio, for an assistant that starts it."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from generator.dialects.mcp import build_server
from generator.dialects.mcp_caller import Caller


class Command(BaseCommand):
    help = (
        "Serve MCP over stdin/stdout (an assistant's MCP client starts this): tools to "
        "generate images, list models, follow and cancel jobs, as USER (their history)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="The user the jobs belong to.")

    def handle(self, *args, user, **options):
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(
                f"No user {user!r}: make one (manage.py createsuperuser, or apikey create {user})."
            )
        caller = Caller(user=owner)
        build_server(lambda ctx: caller).run("stdio")
