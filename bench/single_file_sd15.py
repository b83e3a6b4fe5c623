"""Figures for a single-file checkpoint of SD 1.5's shape on the CPU: load time, peak memory
while loading, and seconds a step at 512 px, on PyTorch and on OpenVINO side by side.

    .venv/bin/python -m bench.single_file_sd15 [--steps 2] [--folder DIR] [--backend both]

Builds (once) `sd15-shaped.safetensors`: SD 1.5's UNet, VAE and 12-layer CLIP text encoder
(full 49408-token vocabulary) with random weights, in float16, under A1111's (LDM's) tensor
names, as civitai's files hold them. Each figure comes from a fresh child process, so the peak
RSS is the loader's own: `from_single_file` with the shipped sd1 config, offline. OpenVINO
takes two: the first use's export of the file to IR (`openvino_ir.export_to_ir`, as the backend
does it), then a worker's load of that IR, compiled for 512x512, and its steps.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(path: str | Path) -> Path:
    path = Path(path)
    if path.exists():
        return path
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.sd15_shaped import TEXT_ENCODER, UNET, VAE
    from tests.support.single_file_models import ldm_state_dict

    torch.manual_seed(0)

    class Parts:  # what ldm_state_dict reads of a pipeline
        unet = UNet2DConditionModel(**UNET).half()
        vae = AutoencoderKL(**VAE).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **TEXT_ENCODER)).half()

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial")
    save_file(ldm_state_dict(Parts), staging)
    staging.rename(path)
    return path


def measure(path: Path, steps: int) -> dict:
    """In this (fresh) process: load, then `steps` steps at 512 px."""
    import django

    django.setup()
    import torch

    from generator.pipelines.registry import quiet_libraries
    from generator.pipelines.single_file import load_pipeline

    quiet_libraries()
    started = time.perf_counter()
    pipe = load_pipeline(path, torch.float32)
    loaded = time.perf_counter() - started
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pipe.set_progress_bar_config(disable=True)
    times = []

    def on_step(pipe_, step, timestep, kwargs):
        times.append(time.perf_counter())
        return kwargs

    if steps:
        began = time.perf_counter()
        with torch.inference_mode():
            pipe("a lighthouse", num_inference_steps=steps, width=512, height=512,
                 callback_on_step_end=on_step, output_type="latent")  # fmt: skip
        times.insert(0, began)
    per_step = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {
        "file_gb": round(path.stat().st_size / 1e9, 2),
        "load_s": round(loaded, 1),
        "peak_rss_while_loading_gb": round(peak_load / 1024, 2),
        "s_per_step_512": round(min(per_step), 2) if per_step else None,
        "torch_threads": torch.get_num_threads(),
    }


def export_openvino(path: Path) -> dict:
    """In this (fresh) process: the file exported to OpenVINO IR (fp32), as on first use."""
    import django

    django.setup()
    from generator.pipelines.openvino_ir import export_to_ir, is_cached
    from generator.pipelines.registry import quiet_libraries

    quiet_libraries()
    target = ir_folder(path)
    if is_cached(target):
        return {"export_s": None, "peak_rss_while_exporting_gb": None}
    started = time.perf_counter()
    export_to_ir(str(path), target, "fp32")
    return {
        "export_s": round(time.perf_counter() - started, 1),
        "peak_rss_while_exporting_gb": round(peak_rss_gb(), 2),
    }


def measure_openvino(path: Path, steps: int) -> dict:
    """In this (fresh) process: the IR loaded and compiled for 512x512, then `steps` steps."""
    import torch
    from optimum.intel import OVPipelineForText2Image

    started = time.perf_counter()
    pipe = OVPipelineForText2Image.from_pretrained(ir_folder(path), export=False, compile=False)
    pipe.reshape(batch_size=1, height=512, width=512, num_images_per_prompt=1)
    pipe.compile()
    loaded = time.perf_counter() - started
    peak_load = peak_rss_gb()
    pipe.set_progress_bar_config(disable=True)
    times = []

    def on_step(pipe_, step, timestep, kwargs):
        times.append(time.perf_counter())
        return kwargs

    began = time.perf_counter()
    pipe("a lighthouse", num_inference_steps=steps, width=512, height=512,
         callback_on_step_end=on_step, output_type="latent")  # fmt: skip
    per_step = [b - a for a, b in zip([began, *times], times, strict=False)]
    return {
        "load_and_compile_s": round(loaded, 1),
        "peak_rss_while_loading_gb": round(peak_load, 2),
        "s_per_step_512": round(min(per_step), 2) if per_step else None,
        "torch_threads": torch.get_num_threads(),
    }


def ir_folder(path: Path) -> Path:
    return path.with_name(path.stem + "-openvino-fp32")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.single_file_sd15", *args],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "sdsite.settings",
             "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--folder", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--backend", choices=("both", "pytorch", "openvino"), default="both")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--export-openvino", help=argparse.SUPPRESS)
    parser.add_argument("--measure-openvino", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.steps)))
        return
    if args.export_openvino:
        print(json.dumps(export_openvino(Path(args.export_openvino))))
        return
    if args.measure_openvino:
        print(json.dumps(measure_openvino(Path(args.measure_openvino), args.steps)))
        return
    path = Path(args.folder) / "sd15-shaped.safetensors"
    subprocess.run(
        [sys.executable, "-c", f"from bench.single_file_sd15 import build; build({str(path)!r})"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    steps = ["--steps", str(args.steps)]
    if args.backend in ("both", "pytorch"):
        print(json.dumps({"backend": "pytorch", **child("--measure", str(path), *steps)}))
    if args.backend in ("both", "openvino"):
        exported = child("--export-openvino", str(path))
        measured = child("--measure-openvino", str(path), *steps)
        print(json.dumps({"backend": "openvino", **exported, **measured}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
