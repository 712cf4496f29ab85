#!/usr/bin/env bash
# The objectives study in the README, end to end: the sweep, its report, and a copy of the report's table,
# CSV and figures into experiments/results/study/ (what the README shows).
#
#   bash experiments/study.sh [workdir]        # default runs/study; about 40 min on the 2-core CPU
#
# Rerunning skips finished points and resumes an interrupted one from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
# The README's numbers come from the JPEG copy in ../shared; SMOOTHMAX_CIFAR10= (empty) takes the official archive.
export SMOOTHMAX_CIFAR10="${SMOOTHMAX_CIFAR10-../shared/data/cifar10-jpeg.tgz}"
workdir=${1:-runs/study}
start=$(date +%s)
python -m smoothmax sweep --config configs/sweep_temperature.py --workdir "$workdir" --no-progress
echo "study: sweep command took $(( $(date +%s) - start )) s"
python -m smoothmax report "$workdir"
out=experiments/results/study
mkdir -p "$out/figures"
cp "$workdir/report.md" "$workdir/results.csv" "$out/"
cp "$workdir"/figures/*.png "$out/figures/"
echo "study: copied report.md, results.csv and figures to $out"
