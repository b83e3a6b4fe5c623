from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from generator.apikeys import issue_key, user_for
from generator.models import ApiKey


class Command(BaseCommand):
    help = "Create, list and revoke API keys (for the A1111 and OpenAI endpoints and scripts)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser(
            "create", help="Make a key for USERNAME (and the account, with no password)."
        )
        create.add_argument("username")
        create.add_argument("--name", default="", help="What the key is for.")
        create.add_argument(
            "--unlimited",
            action="store_true",
            help="Exempt from the per-owner limits (SD_MAX_QUEUED_PER_OWNER, SD_RATE_LIMIT).",
        )
        listing = actions.add_parser("list", help="List the keys, of USERNAME or of everyone.")
        listing.add_argument("username", nargs="?")
        revoke = actions.add_parser("revoke", help="Revoke a key, given whole or by its prefix.")
        revoke.add_argument("key")

    def handle(self, *args, action, **options):
        getattr(self, action)(**options)

    def create(self, username, name, unlimited=False, **options):
        row, key = issue_key(user_for(username), name)
        if unlimited:
            row.unlimited = True
            row.save(update_fields=["unlimited"])
        self.stdout.write(f"Key {row.prefix}… for {username}; it is shown only now:")
        self.stdout.write(key)

    def list(self, username=None, **options):
        keys = ApiKey.objects.select_related("user")
        if username:
            if not get_user_model().objects.filter(username=username).exists():
                raise CommandError(f"No user {username!r}.")
            keys = keys.filter(user__username=username)
        for row in keys:
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            self.stdout.write(
                f"{row.prefix}…  {row.user.username}  {row.name or '-'}  {state}, last used {used}"
            )

    def revoke(self, key, **options):
        from generator.apikeys import digest

        matches = ApiKey.objects.filter(Q(digest=digest(key)) | Q(prefix=key.rstrip("…")))
        matches = matches.filter(revoked_at__isnull=True)
        if len(key.rstrip("…")) < 8 or not matches.exists():
            raise CommandError("No active key with that value or prefix (at least 8 characters).")
        if matches.count() > 1:
            raise CommandError("That prefix matches several keys: give the whole key.")
        row = matches.get()
        row.revoke()
        self.stdout.write(f"Revoked {row.prefix}… of {row.user.username}.")
