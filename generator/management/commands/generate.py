import argparse
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.forms import GenerateForm
from generator.media_storage import is_remote
from generator.models import GenerationSession, Status, WorkerRecord
from generator.params import PARAMETERS
from generator.services import START_WORKER, session_cancel, session_create_batch
from generator.worker.loop import Worker


class Command(BaseCommand):
    help = (
        "Queue images exactly as the web page does and follow each with a progress bar; "
        "prints where each image is."
    )

    def add_arguments(self, parser):
        parser.add_argument("prompt", help="What to draw.")
        for parameter in PARAMETERS[1:]:  # every parameter of the spec, as an option
            if parameter.kind == "units":
                continue  # ControlNet's units take the page or the APIs
            flags = [f"--{parameter.name.replace('_', '-')}"]
            if parameter.cli:
                flags.insert(0, parameter.cli)
            if parameter.kind == "bool":  # --enable-hr / --no-enable-hr
                parser.add_argument(
                    *flags, dest=parameter.name, action=argparse.BooleanOptionalAction,
                    help=parameter.help.replace("%", "%%"),
                )  # fmt: skip
                continue
            choices = [value for value, _ in parameter.choices] or None
            number = parameter.python_type
            bounds = (
                f" ({number(parameter.minimum)}..{number(parameter.maximum)})"
                if parameter.maximum is not None and parameter.minimum is not None
                else ""
            )
            default = "" if parameter.default in (None, "") else f", default {parameter.default}"
            description = f"{parameter.help.rstrip('.')}{bounds}{default}."
            parser.add_argument(
                *flags,
                dest=parameter.name,
                type=parameter.python_type,
                choices=None if parameter.name == "model" else choices,
                help=description.replace("%", "%%"),
            )
        parser.add_argument("--init-image", help="Start from this image (image-to-image).")
        parser.add_argument("--mask-image", help="Inpainting mask (white: repaint).")
        parser.add_argument("--count", type=int, default=1, help="How many images (default 1).")
        parser.add_argument(
            "--output", help="Copy the image here (with --count, NAME-1.png, NAME-2.png, ...)."
        )
        parser.add_argument(
            "--inline",
            action="store_true",
            help="Run the jobs in this process instead of waiting for a runworker.",
        )
        parser.add_argument(
            "--poll-interval", type=float, default=0.1, help="Seconds between progress reads."
        )

    def handle(self, *args, **options):
        if options["count"] < 1:
            raise CommandError("--count must be at least 1.")
        parameters, images = self.validated(options)
        if not options["inline"] and not WorkerRecord.objects.alive().exists():
            raise CommandError(
                f"No worker is running: start one with {START_WORKER.strip('`')}, "
                "or pass --inline to generate in this process."
            )
        log_file = self.keep_logs_off_the_terminal(options["verbosity"])
        sessions = session_create_batch(count=options["count"], images=images, **parameters)
        worker_thread = self.start_inline_worker(sessions) if options["inline"] else None
        try:
            failures = self.follow_all(sessions, options, inline=worker_thread is not None)
        finally:
            if worker_thread is not None:
                worker_thread.worker.stop(grace=0)
                worker_thread.join()
            if log_file:
                self.stderr.write(f"Log: {log_file}")
        if failures:
            raise CommandError(f"{failures} of {len(sessions)} image(s) failed.")

    def keep_logs_off_the_terminal(self, verbosity: int) -> Path | None:
        """The terminal shows the bars and the results; the worker's log goes to a file.

        With -v 2 or more the log stays on the terminal. Returns the file's path.
        """
        # Set before diffusers is first imported (it warns at import time).
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if verbosity >= 2:
            return None
        path = settings.DATA_DIR / "logs" / "generate.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("generator")
        logger.handlers = [handler]
        logger.propagate = False
        return path

    def follow_all(self, sessions, options, inline: bool) -> int:
        """Follow every session to its end; returns how many did not complete."""
        done = {}
        while True:
            try:
                for index, session in enumerate(sessions, start=1):
                    if index not in done:
                        done[index] = self.follow(session, index, options)
                return sum(not ok for ok in done.values())
            except KeyboardInterrupt:
                if not self.offer_to_cancel(sessions, inline):
                    sys.exit(130)

    def validated(self, options) -> tuple[dict, dict]:
        """(parameters, input images), checked by the same form as the web page's."""
        data = {p.name: options[p.name] for p in PARAMETERS if options.get(p.name) is not None}
        files = {}
        for field in ("init_image", "mask_image"):
            if options[field]:
                try:
                    content = Path(options[field]).read_bytes()
                except OSError as error:
                    raise CommandError(f"{field}: {error.strerror}: {options[field]}") from None
                files[field] = SimpleUploadedFile(Path(options[field]).name, content)
        form = GenerateForm(data, files)
        if not form.is_valid():
            problems = "; ".join(f"{field}: {' '.join(m)}" for field, m in form.errors.items())
            raise CommandError(f"Invalid parameters: {problems}")
        return form.parameters(), form.images

    def start_inline_worker(self, sessions) -> threading.Thread:
        worker = Worker(poll_interval=0.05, session_ids=[s.pk for s in sessions])
        thread = threading.Thread(target=worker.run, name="inline-worker", daemon=True)
        thread.worker = worker
        thread.start()
        return thread

    def follow(self, session, index: int, options) -> bool:
        """Show one session's progress until it ends; True when it completed."""
        label = f"image {index}/{options['count']}"
        # The raw stream under Django's OutputWrapper, which would add a newline
        # to each of tqdm's carriage-return updates.
        stream = self.stderr._out
        with tqdm(total=session.total_steps, desc=label, unit="step", file=stream) as bar:
            while True:
                session.refresh_from_db()
                bar.total = max(session.total_steps, 1)
                bar.n = session.current_step
                bar.set_postfix_str(session.phase or session.status, refresh=False)
                bar.refresh()
                if session.is_finished:
                    break
                time.sleep(options["poll_interval"])
        if session.status != Status.COMPLETED:
            self.stderr.write(f"{label} {session.status}: {session.error or 'cancelled'}")
            return False
        self.stdout.write(self.deliver(session, index, options))
        return True

    def deliver(self, session: GenerationSession, index: int, options) -> str:
        if not options["output"]:  # where it is: its file here, or its name in the bucket
            return str(Path(session.image.path)) if not is_remote() else session.image.name
        target = Path(options["output"])
        if options["count"] > 1:
            target = target.with_name(f"{target.stem}-{index}{target.suffix or '.png'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with session.image.open("rb") as source, open(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
        return str(target)

    def offer_to_cancel(self, sessions, inline: bool) -> bool:
        """After Ctrl-C: cancel the unfinished images, or leave them. True: keep following.

        Jobs left to an inline worker would never run once this process ends, so
        "no" there means: wait for them here.
        """
        for session in sessions:
            session.refresh_from_db()
        unfinished = [s for s in sessions if not s.is_finished]
        if not unfinished:
            return False
        answer = "y"
        if sys.stdin.isatty():
            try:
                question = f"\nCancel the {len(unfinished)} unfinished image(s)? [Y/n] "
                answer = input(question).strip().lower() or "y"
            except (EOFError, KeyboardInterrupt):
                answer = "y"
        if answer.startswith("y"):
            for session in unfinished:
                session_cancel(session.pk)
            self.stderr.write("Cancelled.")
            return False
        if inline:
            self.stderr.write("Waiting for them here (Ctrl-C again to be asked again).")
            return True
        host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("SDSITE_PORT", "8000")
        base = f"http://{host}:{port}"
        self.stderr.write("Left in the queue; a worker will run them. Follow them on the web:")
        for session in unfinished:
            self.stdout.write(f"{session.pk} {base}{session.get_absolute_url()}")
        return False
