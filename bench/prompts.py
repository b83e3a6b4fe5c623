"""What A1111-style prompts cost a job: weights, a long prompt, a LoRA, per backend.

    .venv/bin/python -m bench.prompts [--steps 20] [--size 128] [--runs 5]

Warm jobs on the demo model (the pipeline loaded and, on OpenVINO, compiled for the
prompt's length before the timed runs); the median of --runs rounds, each
round one job per prompt.
LoRA are PyTorch's only (OpenVINO refuses them).
"""

import argparse
import os
import statistics
import time

from bench._setup import django_on_scratch_data, machine_line

PLAIN = "a red circle on a blue background"
PROMPTS = {
    "plain": PLAIN,
    "weighted": "a (red:1.3) circle on a [[blue]] background",
    "long (2 chunks)": PLAIN + ", " + ", ".join(["plain"] * 80),
    "LoRA": PLAIN + " <lora:demo-swap:0.8>",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    django_on_scratch_data()
    from generator.pipelines import GenerationRequest, create_backend

    print(f"# Prompt cost per job\n\n{machine_line()}; demo model, {args.size}x{args.size}, "
          f"{args.steps} steps, median of {args.runs} warm jobs\n")  # fmt: skip
    print("| Backend | Prompt | s/job | vs plain |\n|---|---|---|---|")
    for name in ("pytorch", "openvino"):
        backend = create_backend(name, "demo", "cpu")
        backend.load(lambda phase: None)
        requests = {
            label: GenerationRequest(prompt, "", args.steps, 7.5, args.size, args.size, 1)
            for label, prompt in PROMPTS.items()
            if label != "LoRA" or name == "pytorch"
        }

        def job(request, backend=backend):
            started = time.perf_counter()
            backend.generate(request, lambda *a: True, lambda phase: None)
            return time.perf_counter() - started

        for request in requests.values():
            job(request)  # warm: compiled for this prompt's length, the LoRA loaded
        # Rounds of one job per prompt, so a slow moment of the machine hits them all.
        times = {label: [] for label in requests}
        for _ in range(args.runs):
            for label, request in requests.items():
                times[label].append(job(request))
        plain = statistics.median(times["plain"])
        for label, measured in times.items():
            seconds = statistics.median(measured)
            print(f"| {name} | {label} | {seconds:.3f} | {seconds / plain - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
