"""On a CUDA GPU: half precision and PyTorch's fused attention, the CPU's pictures from
the demo model, a batch's images against the single jobs', and no host synchronisation
added to a step, a due preview's included (its copy back does not wait).

CI has no GPU, so these skip there (the one thing in the suite that cannot exist on
its machine). On a GPU box, SDSITE_REQUIRE_CUDA=1 turns the skip into a failure:

    SD_DEVICE=cuda SDSITE_REQUIRE_CUDA=1 .venv/bin/python -m pytest -s tests/test_cuda.py
"""

import collections
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from generator.pipelines import GenerationRequest, create_backend, demo

torch = pytest.importorskip("torch")

if not torch.cuda.is_available():
    if os.environ.get("SDSITE_REQUIRE_CUDA") == "1":
        raise RuntimeError("SDSITE_REQUIRE_CUDA=1, but PyTorch finds no CUDA GPU")
    pytest.skip("no CUDA GPU here (CI has none)", allow_module_level=True)

GENERATOR = Path(__file__).resolve().parent.parent / "generator"


def request(**changes) -> GenerationRequest:
    values = dict(
        prompt="a red circle on a blue background", negative_prompt="", steps=8,
        guidance_scale=7.5, width=128, height=128, seed=5,
    )  # fmt: skip
    return GenerationRequest(**values | changes)


def say(figure: str) -> None:
    """A figure for the record (`pytest -s` shows it)."""
    sys.stdout.write(f"\n{figure}\n")


def ignore(phase: str) -> None:
    pass


@pytest.fixture(scope="module")
def gpu_backend():
    backend = create_backend("pytorch", "demo", "cuda")
    backend.load(ignore)
    return backend


def test_a_model_runs_in_half_precision_with_fused_attention(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    # A copy of the demo's folder: to the worker, a model like any other (the demo
    # itself runs in float32, as test_the_gpu_draws_what_the_cpu_draws shows why).
    model = shutil.copytree(demo.WEIGHTS, tmp_path / "model")
    backend = create_backend("pytorch", str(model), "cuda")
    backend.load(ignore)
    pipe = backend.pipe
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert part.device.type == "cuda" and part.dtype == torch.float16
    # AttnProcessor2_0 is torch's scaled_dot_product_attention (flash or memory-efficient).
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_the_gpu_draws_what_the_cpu_draws(gpu_backend):
    """The same seed gives the CPU's picture (the noise comes from a CPU generator on
    both). The demo model runs in float32 on a GPU for this: in float16 its picture
    moved 11.6 levels from the CPU's on an H100, where another seed's is 14.9 off."""
    cpu = create_backend("pytorch", "demo", "cpu")
    cpu.load(ignore)

    def image(backend, **changes):
        return np.asarray(backend.generate(request(**changes), lambda *a: True, ignore), int)

    on_cpu, on_gpu = image(cpu), image(gpu_backend)
    another_seed = np.abs(image(cpu, seed=6) - on_cpu).mean()
    off = np.abs(on_gpu - on_cpu).mean()
    say(f"against the CPU, same seed: GPU {gpu_backend.pipe.unet.dtype} {off:.2f} levels; "
        f"another seed {another_seed:.2f}")  # fmt: skip
    assert gpu_backend.pipe.unet.dtype == torch.float32
    assert off < 1.0


def test_a_batch_on_the_gpu_gives_each_job_its_own_image(gpu_backend):
    prompts = ["a red circle", "a green square on black", "a yellow triangle"]
    requests = [request(seed=seed, prompt=prompt) for seed, prompt in enumerate(prompts)]
    batched = gpu_backend.generate_batch(requests, lambda *a: True, ignore)
    alone = [gpu_backend.generate(r, lambda *a: True, ignore) for r in requests]
    for together, single in zip(batched, alone, strict=True):
        difference = np.abs(np.asarray(together, int) - np.asarray(single, int))
        say(f"batch of 3 against alone: mean {difference.mean():.3f} levels, "
            f"max {difference.max()}")  # fmt: skip
        # cuBLAS and cuDNN pick other kernels for another batch size, which sum in
        # another order (on an H100 in float16: mean 0.18 levels at most, max 2). Close
        # enough not to see; a wrong seed or prompt is tens of levels off.
        assert difference.mean() < 0.5
    assert np.abs(np.asarray(alone[0], int) - np.asarray(alone[1], int)).mean() > 10


@pytest.mark.django_db(transaction=True)
def test_a_step_waits_on_the_gpu_only_for_a_due_preview(settings):
    """The worker's own code (step reporter, progress writer, previews) adds no host
    synchronisation per step: its syncs are the same for a 4-step and a 16-step job
    (the prompt's embeddings, one due preview). diffusers' schedulers sync on their own."""
    from generator.services import session_create
    from generator.worker.claims import claim_next
    from generator.worker.loop import Worker

    settings.SD_DEVICE = "cuda"
    settings.SD_PREVIEW_INTERVAL = 3600  # one preview a job: the first step's
    worker = Worker(once=True, worker_id="cuda-test")

    def syncs_of_a_job(steps: int) -> collections.Counter:
        session_create(prompt="a red circle", steps=steps, width=128, height=128)
        job = claim_next("cuda-test")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                worker.process([job])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        job.session.refresh_from_db()
        assert job.session.status == "completed", job.session.error
        return collections.Counter(
            Path(w.filename).relative_to(GENERATOR.parent).as_posix()
            if Path(w.filename).is_relative_to(GENERATOR) else "elsewhere (torch, diffusers)"
            for w in caught if "synchroniz" in str(w.message)
        )  # fmt: skip

    syncs_of_a_job(2)  # loads the model
    short, long = syncs_of_a_job(4), syncs_of_a_job(16)
    say(f"host syncs, 4-step job: {dict(short)}; 16-step job: {dict(long)}")
    ours = {where for where in short | long if where.startswith("generator/")}
    assert ours, "no sync seen at all: is the debug mode working?"
    assert {where: short[where] for where in ours} == {where: long[where] for where in ours}
    # The preview's small picture comes back by a non-blocking copy into pinned memory.
    assert "generator/pipelines/previews.py" not in short | long


def test_a_preview_from_the_gpu_lands_without_a_step_waiting_for_it():
    """start_preview copies the small picture without a host sync; once its event has
    passed it is the picture latents_to_rgb gives (which waits), in pinned memory."""
    from generator.pipelines.previews import latents_to_rgb, start_preview

    latents = torch.randn(1, 4, 64, 64, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any sync in start_preview raises
    try:
        preview = start_preview(latents, step=3)
        preview.ready()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    preview.copied.synchronize()
    assert preview.ready() and preview.step == 3
    assert preview.rgb.is_pinned() and preview.rgb.device.type == "cpu"
    assert torch.equal(preview.rgb, latents_to_rgb(latents))


@pytest.mark.django_db(transaction=True)
def test_a_gpu_jobs_preview_is_kept_with_the_step_it_shows(settings):
    """The preview taken at step 1 is handed over once its copy has landed (with that
    step's write or a later one) and is stored as step 1's (preview_step), not as the
    step it was handed over with."""
    from generator.services import session_create
    from generator.worker.claims import claim_next
    from generator.worker.loop import Worker

    settings.SD_DEVICE = "cuda"
    settings.SD_PREVIEW_INTERVAL = 3600  # one preview a job: the first step's
    worker = Worker(once=True, worker_id="cuda-preview-test")
    session = session_create(prompt="a red circle", steps=8, width=128, height=128)
    worker.process([claim_next("cuda-preview-test")])
    session.refresh_from_db()
    assert session.status == "completed", session.error
    assert session.preview and session.preview_step == 1


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_on_the_gpu_streams_every_step_once_and_serves_the_png(
    web_server, start_worker, tmp_path
):
    """The deployed path on a GPU: uvicorn, and `manage.py runworker` on CUDA (started
    afresh: tests/support/processes.py), each step on the stream once, in order."""
    import httpx

    from tests.step_gate import assert_every_step_once_with_its_phases, follow_a_gated_job

    messages, worker = follow_a_gated_job(
        web_server, start_worker, tmp_path / "gate", steps=8, SD_DEVICE="cuda"
    )
    assert_every_step_once_with_its_phases(messages, steps=8)
    assert "step gate" not in worker.log()
    png = httpx.get(web_server.url + messages[-1]["image_url"], timeout=30)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
