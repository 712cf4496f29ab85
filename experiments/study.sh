#!/usr/bin/env bash
# The objectives study in the README, end to end: the stages of configs/sweep_temperature.py into one workdir,
# the choices between them (experiments/study.py choose) and the report (results.csv, paired.csv,
# selection.csv, report.md, figures/).
#
#   bash experiments/study.sh [workdir]            # default experiments/results/study, where the points are committed
#   bash experiments/study.sh runs/study-gpu gpu   # the same study at GPU scale (configs/sweep_temperature.py:gpu)
#
# Resumable at any point: a finished run is never retrained (its folder holds summary.json), an interrupted one
# resumes from its last checkpoint, and a stage whose points are all finished takes seconds. On the 2-core CPU
# a short run takes about 70 s and a long one about 4 min; the README gives the whole study's hours.
set -euo pipefail
cd "$(dirname "$0")/.."
# The README's numbers come from the JPEG copy in ../shared; SMOOTHMAX_CIFAR10= (empty) takes the official archive.
export SMOOTHMAX_CIFAR10="${SMOOTHMAX_CIFAR10-../shared/data/cifar10-jpeg.tgz}"
export SMOOTHMAX_STUDY_DIR="${1:-experiments/results/study}"
prefix=${2:+$2-}  # "gpu-" for the GPU-scale variants
NAME=study CONFIG="configs/sweep_temperature.py:$prefix" WORKDIR="$SMOOTHMAX_STUDY_DIR" CHOOSER=experiments/study.py
. experiments/stages.sh
stage select; choose; extend
stage rule; choose; extend
stage replicate; choose   # lse's implicit margins, for the controls
stage long
stage controls
finish
