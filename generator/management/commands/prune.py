import re

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat
from tqdm import tqdm

from generator import disk, retention
from generator.models import FINISHED_STATUSES

AGE = re.compile(r"^(\d+(?:\.\d+)?)([dhm]?)$")
UNIT_DAYS = {"d": 1.0, "": 1.0, "h": 1 / 24, "m": 1 / 1440}


def days_of(value: str) -> float:
    match = AGE.match(value.strip())
    if not match:
        raise CommandError(f"--older-than {value!r}: use e.g. 30d, 12h or 90m.")
    return float(match[1]) * UNIT_DAYS[match[2]]


class Command(BaseCommand):
    help = (
        "Delete ended sessions older than an age, with their images, previews and inputs; "
        "--orphans also removes media files that no session names."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            help="An age: 30d, 12h, 90m (default: SD_KEEP_DAYS days; without it, nothing).",
        )
        parser.add_argument(
            "--status",
            default=",".join(FINISHED_STATUSES),
            help="Comma-separated statuses to delete (default: completed,failed,cancelled).",
        )
        parser.add_argument("--orphans", action="store_true", help="Also remove orphaned files.")
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args, older_than, status, orphans, dry_run, **options):
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in FINISHED_STATUSES]
        if unknown:
            raise CommandError(
                f"--status {','.join(unknown)}: only ended sessions are pruned "
                f"({', '.join(FINISHED_STATUSES)})."
            )
        days = days_of(older_than) if older_than else settings.SD_KEEP_DAYS
        verb = "Would delete" if dry_run else "Deleted"
        if days is None and not orphans:
            raise CommandError("Say --older-than (or set SD_KEEP_DAYS), or --orphans.")
        if days is not None:
            sessions = retention.ended_before(retention.cutoff(days), statuses)
            with tqdm(total=sessions.count(), unit="session", disable=None) as bar:
                rows, freed = retention.prune(sessions, dry_run=dry_run, progress=bar.update)
            self.stdout.write(f"{verb} {rows} sessions, {filesizeformat(freed)} of files.")
        if orphans:
            found = retention.orphans()
            freed = sum(size for _, size in found)
            if not dry_run:
                retention.delete_orphans(found)
            self.stdout.write(f"{verb} {len(found)} orphaned files, {filesizeformat(freed)}.")
        disk.forget_media_usage()
