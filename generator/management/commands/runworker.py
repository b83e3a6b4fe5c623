import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from generator.db import until_database_answers
from generator.media_storage import settings_mismatch
from generator.worker.heartbeat import new_worker_id, register_worker


class Command(BaseCommand):
    help = "Claim pending generation sessions from the database and run them."

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true", help="Process at most one job, then exit."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=0.2,
            help="Seconds between queue polls while idle (default 0.2).",
        )
        parser.add_argument("--device", help="Override SD_DEVICE for this worker.")
        parser.add_argument(
            "--grace",
            type=float,
            default=settings.SD_WORKER_GRACE,
            help="Seconds the current job may run on after SIGTERM/Ctrl-C before it is "
            "interrupted and given back to the queue (default SD_WORKER_GRACE, 30).",
        )

        parser.add_argument(
            "--model",
            action="append",
            dest="models",
            help="Claim only sessions of this model (repeat for several; default: any).",
        )
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            choices=["pytorch", "openvino"],
            help="Claim only sessions of this backend (repeatable; default: any).",
        )

    def handle(
        self, *args, once, poll_interval, device, grace, models, backends, verbosity, **options
    ):
        if poll_interval <= 0:
            raise CommandError("--poll-interval must be positive.")
        if grace < 0:
            raise CommandError("--grace must not be negative.")
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
        logging.getLogger("generator").setLevel(level)
        # Say "a worker is starting" before the worker's libraries load, so the
        # page and the CLI do not report that no worker runs meanwhile. A database that
        # cannot take the row (away, its disk full) is waited for, and said so, not a crash.
        # A worker that would write files where the web cannot read them (another storage,
        # bucket or prefix) or with another SECRET_KEY stops here, with one line.
        try:
            mismatch = until_database_answers(settings_mismatch, what="the media settings' check")
        except DatabaseError:  # no table yet (migrations to apply): nothing recorded
            mismatch = None
        if mismatch:
            raise CommandError(mismatch)
        worker_id = new_worker_id()
        serves = {"models": models or [], "backends": backends or []}
        until_database_answers(register_worker, worker_id, serves, ready=False, what="registration")
        from generator.worker.loop import Worker

        Worker(
            worker_id=worker_id,
            poll_interval=poll_interval,
            once=once,
            device=device,
            grace=grace,
            models=models,
            backends=backends,
        ).run()
