#!/usr/bin/env bash
# The pre-registered study (configs/primaries.py, issue #25) end to end: each stage into one sweep workdir,
# the choices between them (experiments/primaries.py choose) and the report (results.csv, primaries.csv,
# report.md, figures/).
#
#   bash experiments/primaries.sh [workdir]   # default experiments/results/primaries, where the points are committed
#
# Resumable at any point: a finished run is never retrained (its folder holds summary.json), an interrupted one
# resumes from its last checkpoint (every epoch), and a stage whose points are all finished takes seconds.
# SMOOTHMAX_PRIMARIES_STAGES="tune tune-r5" runs only those stages (and their choices), for a session that
# has time for part of the study.
set -euo pipefail
cd "$(dirname "$0")/.."
# The README's numbers come from the JPEG copy in ../shared; SMOOTHMAX_CIFAR10= (empty) takes the official archive.
export SMOOTHMAX_CIFAR10="${SMOOTHMAX_CIFAR10-../shared/data/cifar10-jpeg.tgz}"
export SMOOTHMAX_PRIMARIES_DIR="${1:-experiments/results/primaries}"
stages="${SMOOTHMAX_PRIMARIES_STAGES:-tune tune-r5 evaluate long-tune long-evaluate}"
NAME=primaries CONFIG=configs/primaries.py: WORKDIR="$SMOOTHMAX_PRIMARIES_DIR" CHOOSER=experiments/primaries.py
. experiments/stages.sh
for s in $stages; do
  stage "$s"; choose
  case "$s" in tune|tune-r5) extend ;; esac
done
finish
