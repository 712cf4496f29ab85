#!/usr/bin/env bash
# One short check of the GPU recipe on an accelerator (≤ 8 minutes on one H100/H200-class GPU), as JSON lines
# in OUT_DIR/gpu_check.jsonl: the recipe's wall time, time to 93 %, images/s and peak memory; an 8-temperature
# vmapped population against 8 sequential runs; the train step in bf16 against f32 (experiments/gpu_check.py).
#
#   bash experiments/gpu_check.sh OUT_DIR            # on the GPU; results go under experiments/results/gpu/
#   bash experiments/gpu_check.sh --smoke OUT_DIR    # the same code paths on the synthetic set, seconds on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=()
if [ "${1:-}" = "--smoke" ]; then smoke=(--smoke); shift; fi
out="${1:?usage: bash experiments/gpu_check.sh [--smoke] OUT_DIR}"
# The README's numbers come from the JPEG copy in ../shared; SMOOTHMAX_CIFAR10= (empty) takes the official archive.
export SMOOTHMAX_CIFAR10="${SMOOTHMAX_CIFAR10-../shared/data/cifar10-jpeg.tgz}"
python -c "import jax; print('gpu_check:', jax.devices())"
exec python experiments/gpu_check.py "$out" "${smoke[@]}"
