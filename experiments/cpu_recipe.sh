#!/usr/bin/env bash
# The CPU recipe (configs/cifar10_cpu.py) for softmax, lse and hard (m = 1), one after another, each timed as
# a whole command (process start, data load, compilation, training, evaluation). These are the README's
# "CPU recipe" numbers; run each alone on the machine, as timings are shared with anything else running.
#
#   bash experiments/cpu_recipe.sh [variant ...]     # default: softmax lse hard-m1; ~14 min each on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
# The README's numbers come from the JPEG copy in ../shared; SMOOTHMAX_CIFAR10= (empty) takes the official archive.
export SMOOTHMAX_CIFAR10="${SMOOTHMAX_CIFAR10-../shared/data/cifar10-jpeg.tgz}"
mkdir -p runs
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(softmax lse hard-m1)
for variant in "${variants[@]}"; do
    start=$(date +%s.%N)
    python -m smoothmax train --config "configs/cifar10_cpu.py:$variant" --workdir "runs/cpu-$variant" \
      --restart --no-progress | tail -1 > "runs/cpu-$variant.json"
    seconds=$(python -c "import time; print(round(time.time() - $start, 1))")
    echo "{\"variant\": \"$variant\", \"command_seconds\": $seconds, \"summary\": $(cat "runs/cpu-$variant.json")}" \
      | tee -a runs/cpu-recipe-times.jsonl
done
