#!/usr/bin/env bash
# Issue 37's figures on a lent GPU machine, in ONE call of under ~9 minutes.
#
#   bench/gpu_session.sh wheels   # here, with network: var/gpu-wheels (33 MiB: with the
#                                 # working tree, under the 64 MiB a call carries)
#   bench/gpu_session.sh run      # there: run(command="bash bench/gpu_session.sh run",
#                                 #        carry=["var/gpu-wheels"], timeout_s=600)
#
# The GPU machine has no network and .venv cannot travel (64 MiB): `run` installs
# bench/gpu-requirements.txt from the carried wheels, offline, into a folder put ahead of
# the machine's own python3 packages (PYTHONPATH), whose CUDA torch it uses. Then, each
# step bounded by what is left of GPU_SESSION_SECONDS (default 540), written to $OUT as it goes
# (session.log, steps.txt: every step's output, gpu_speed.jsonl, environment.txt):
#   1. build sd15-shaped and sdxl-shaped (random weights, float16) in /tmp
#   2. sd15-shaped 512 px: eager, channels_last (with batch 8 against one by one)
#   3. sdxl-shaped 1024 px: eager (with batch 4 against one by one)
#   4. sd15-shaped 512 px: torch.compile reduce-overhead, cold and from its cache
#   5. tests/test_cuda.py (previews without a host sync, half precision, batches)
#   6. if time is left: sdxl-shaped reduce-overhead, then sd15-shaped max-autotune
# docs/performance.md says what to copy from $OUT into it.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=var/gpu-wheels

if [ "${1:-}" = wheels ]; then
    mkdir -p "$WHEELS"
    exec .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
        -d "$WHEELS" -r bench/gpu-requirements.txt
fi
[ "${1:-}" = run ] || { echo "usage: $0 wheels|run" >&2; exit 2; }

OUT=${OUT:-$(mktemp -d)}
START=$(date +%s)
BUDGET=${GPU_SESSION_SECONDS:-540}
left() { echo $((BUDGET - ($(date +%s) - START))); }
log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$OUT/session.log"; }

PY=${GPU_PYTHON:-python3}
log "machine python: $($PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())' 2>&1)"
nvidia-smi > "$OUT/environment.txt" 2>&1
# The machine's python3 is itself a venv (/opt/torch/.venv): a venv over it would not
# see its torch. The pins go into a folder of their own, ahead of its packages.
SITE=/tmp/sdsite-gpu-site
if [ ! -d "$SITE" ]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl \
        >> "$OUT/environment.txt" 2>&1 || { log "wheels did not install (environment.txt)"; exit 1; }
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pip list >> "$OUT/environment.txt" 2>&1
log "packages ready: $("$PY" -c 'import diffusers, transformers, django; print(diffusers.__version__, transformers.__version__, django.__version__)' 2>&1)"
export HF_HUB_OFFLINE=1 SD_DEVICE=cuda
MODELS=/tmp/sdsite-gpu-models
SPEED=("$PY" -m bench.gpu_speed --device cuda --models-dir "$MODELS" --steps 20 --runs 3
    --pairs 4 --json "$OUT/gpu_speed.jsonl")

step() {  # step NAME SECONDS COMMAND...: at most SECONDS, never past the budget
    local name=$1 most=$2
    shift 2
    local budget
    budget=$(left)
    [ "$most" -lt "$budget" ] && budget=$most
    if [ "$budget" -lt 30 ]; then
        log "$name: skipped, $(left) s left"
        return
    fi
    log "$name: up to $budget s"
    echo "=== $name: $*" >> "$OUT/steps.txt"
    timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$OUT/steps.txt" | tail -n 25
    log "$name: exit ${PIPESTATUS[0]}"
}

step build_sd15 60 "$PY" -m bench.sd15_shaped "$MODELS/sd15-shaped"
step build_sdxl 120 "$PY" -m bench.sdxl_shaped "$MODELS/sdxl-shaped"
step sd15_eager 100 "${SPEED[@]}" --models sd15-shaped --sizes 512 \
    --variants eager channels_last --batch 8 --child-timeout 80
step sdxl_eager 150 "${SPEED[@]}" --models sdxl-shaped --sizes 1024 \
    --variants eager --batch 4 --child-timeout 140
step sd15_compile 200 "${SPEED[@]}" --models sd15-shaped --sizes 512 \
    --variants reduce-overhead --batch 0 --child-timeout 150
step test_cuda 100 env SDSITE_REQUIRE_CUDA=1 "$PY" -m pytest -s -q -p no:cacheprovider \
    tests/test_cuda.py
step sdxl_compile 240 "${SPEED[@]}" --models sdxl-shaped --sizes 1024 \
    --variants reduce-overhead --batch 0 --child-timeout 200
step sd15_autotune 240 "${SPEED[@]}" --models sd15-shaped --sizes 512 \
    --variants max-autotune --batch 0 --child-timeout 200
log "done, $(left) s of the budget left"
