"""The OpenVINO backend against the PyTorch one, on the demo model (real pipelines)."""

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from generator.models import GenerationSession, Status
from generator.pipelines import GenerationRequest, create_backend
from generator.pipelines.openvino_ir import ir_cache_dir
from tests.support.processes import RecordedWrites, wait_for

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]

# Measured on the demo model (256x256, 20 steps, seed 123): the two backends'
# PNGs differ by 0.74 on average (0..255 scale), 6 at most. The bound leaves
# room for other CPUs' kernels while still catching a wrong seed or scheduler,
# which gives a mean difference of about 60.
MAX_MEAN_ABS_PIXEL_DIFFERENCE = 3.0


def run_and_record(session):
    """Run `session` in this process; return its (step, total) writes and phases."""
    with RecordedWrites() as writes:
        call_command("runworker", once=True, verbosity=0)
    session.refresh_from_db()
    return writes.steps, writes.phases


def test_both_backends_report_the_same_steps_and_agree_on_the_image(make_session):
    images, step_writes = {}, {}
    for backend in ("pytorch", "openvino"):
        session = make_session(backend=backend, steps=12, width=256, height=192, seed=123)
        step_writes[backend], phases = run_and_record(session)
        assert session.status == Status.COMPLETED, session.error
        assert [p for p in phases if p][-3:] == ["denoising", "decoding", "saving"]
        with Image.open(session.image.path) as image:
            assert image.size == (256, 192)
            images[backend] = np.asarray(image.convert("RGB"), dtype=np.float64)

    for writes in step_writes.values():  # in order, the last always (some may be coalesced)
        assert writes == sorted(set(writes)) and writes[-1] == (12, 12)
    difference = np.abs(images["pytorch"] - images["openvino"]).mean()
    print(f"mean absolute pixel difference, PyTorch vs OpenVINO: {difference:.3f}")  # noqa: T201
    assert difference < MAX_MEAN_ABS_PIXEL_DIFFERENCE


def test_export_happens_once_and_later_loads_use_the_cache(settings):
    phases = []
    first = create_backend("openvino", "demo", "cpu")
    first.load(phases.append)
    cache = ir_cache_dir("demo", settings.SD_OPENVINO_PRECISION)
    unet_ir = cache / "unet" / "openvino_model.xml"
    assert first.ir_dir == str(cache) and unet_ir.exists()
    before = unet_ir.stat()
    (cache / "marker").write_text("kept")  # an export would replace the whole folder

    phases.clear()
    second = create_backend("openvino", "demo", "cpu")
    second.load(phases.append)

    assert "preparing OpenVINO model (first use)" not in phases
    assert second.ir_dir == str(cache)
    assert (cache / "marker").exists()
    assert unet_ir.stat().st_ino == before.st_ino and unet_ir.stat().st_mtime == before.st_mtime
    assert not list(cache.parent.glob(".export-*"))


def test_a_warm_backend_reuses_the_compiled_pipeline_per_size():
    backend = create_backend("openvino", "demo", "cpu")
    backend.load(lambda phase: None)
    request = GenerationRequest("x", "", 1, 7.5, 128, 128, 1)
    phases = []
    first = backend.pipeline_for(request, phases.append)
    assert phases == ["compiling OpenVINO model"]

    phases.clear()
    assert backend.pipeline_for(request, phases.append) is first
    assert phases == []
    bigger = GenerationRequest("x", "", 1, 7.5, 192, 128, 1)
    assert backend.pipeline_for(bigger, phases.append) is not first


def test_an_unknown_openvino_device_fails_the_session_and_the_worker_lives(
    make_session, start_worker
):
    first = make_session(backend="openvino", steps=2)
    second = make_session(backend="openvino", steps=2)
    worker = start_worker(SD_DEVICE="warp-drive")

    wait_for(
        lambda: GenerationSession.objects.filter(status=Status.FAILED).count() == 2,
        timeout=120,
        message="both sessions to fail",
    )
    for session in (first, second):
        session.refresh_from_db()
        assert "OpenVINO device 'warp-drive' is not available" in session.error
        assert "CPU" in session.error  # it says what is available
    assert worker.popen.poll() is None


def test_a_broken_ir_folder_fails_the_session_and_the_next_job_runs(bad_then_good, tmp_path):
    broken = tmp_path / "broken-ov"
    (broken / "unet").mkdir(parents=True)
    (broken / "model_index.json").write_text('{"_class_name": "OVStableDiffusionPipeline"}')
    (broken / "unet" / "openvino_model.xml").write_text("<net>not a model</net>")
    bad, good, worker = bad_then_good(
        bad={"backend": "openvino", "model": str(broken), "steps": 2},
        good={"backend": "openvino", "steps": 2},
    )
    assert bad.status == Status.FAILED and bad.error
    assert good.status == Status.COMPLETED, good.error
    assert worker.popen.poll() is None


def test_export_command_reports_an_existing_cache_and_rejects_unknown_models(tmp_path):
    from io import StringIO

    from django.core.management.base import CommandError

    out = StringIO()
    call_command("export_openvino", "demo", stdout=out, stderr=StringIO())
    assert "demo" in out.getvalue()
    assert (ir_cache_dir("demo", "fp32") / "unet" / "openvino_model.xml").exists()

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(CommandError, match="failed"):
        call_command("export_openvino", str(empty), stdout=StringIO(), stderr=StringIO())


def test_int8_weights_take_a_third_of_the_space_and_draw_nearly_the_same(settings):
    from pathlib import Path

    images, sizes = {}, {}
    for precision in ("fp32", "int8"):
        settings.SD_OPENVINO_PRECISION = precision
        backend = create_backend("openvino", "demo", "cpu")
        backend.load(lambda phase: None)
        ir = Path(backend.ir_dir)
        assert ir.name.endswith(f"-{precision}")
        sizes[precision] = sum(path.stat().st_size for path in ir.rglob("*.bin"))
        request = GenerationRequest("a red circle on a blue background", "", 12, 7.5, 128, 128, 5)
        image = backend.generate(request, lambda *a: True, lambda phase: None)
        images[precision] = np.asarray(image.convert("RGB"), dtype=np.float64)
    difference = np.abs(images["int8"] - images["fp32"]).mean()
    print(f"int8 / fp32 weights: {sizes['int8'] / sizes['fp32']:.2f}; difference {difference:.2f}")  # noqa: T201
    assert sizes["int8"] < sizes["fp32"] / 3
    assert difference < 8.0  # measured: see the print; a wrong model differs by about 60
