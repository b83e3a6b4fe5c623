import shutil
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.pipelines.openvino_ir import (
    PRECISIONS,
    export_to_ir,
    holds_openvino_ir,
    ir_cache_dir,
    is_cached,
)
from generator.pipelines.registry import quiet_libraries
from generator.pipelines.sources import resolve_model


class Command(BaseCommand):
    help = (
        "Export a diffusers model to OpenVINO IR ahead of time, into the cache the worker "
        "loads from, so the first OpenVINO job does not wait for the export."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "model", nargs="?", help="demo, a hub id or a local folder (default: SD_MODEL)."
        )
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=None,
            help="Weight precision of the IR (default: SD_OPENVINO_PRECISION).",
        )
        parser.add_argument(
            "--force", action="store_true", help="Export again even if the cache holds the model."
        )

    def handle(self, *args, model, precision, force, **options):
        model = model or settings.SD_MODEL
        precision = precision or settings.SD_OPENVINO_PRECISION
        cache_dir = ir_cache_dir(model, precision)
        quiet_libraries()
        with tqdm(total=3, unit="stage", file=sys.stderr, desc="resolving model") as bar:
            try:
                source = resolve_model(model)
            except Exception as exc:
                raise CommandError(f"Cannot find model {model!r}: {exc}") from exc
            bar.update()
            if holds_openvino_ir(source):
                bar.close()
                self.stdout.write(f"{model} is already OpenVINO IR; the worker loads it as it is.")
                return
            if is_cached(cache_dir) and not force:
                bar.close()
                self.stdout.write(f"Already exported: {cache_dir}")
                return
            if force and cache_dir.exists():
                shutil.rmtree(cache_dir)
            bar.set_description(f"exporting to OpenVINO IR ({precision})")
            try:
                export_to_ir(source, cache_dir, precision)
            except Exception as exc:
                raise CommandError(f"Export of {model!r} failed: {exc}") from exc
            bar.update()
            bar.set_description("checking the IR")
            if not holds_openvino_ir(str(cache_dir)):
                raise CommandError(f"The export left no OpenVINO model in {cache_dir}.")
            bar.update()
        self.stdout.write(self.style.SUCCESS(f"Exported {model} to {cache_dir}"))
