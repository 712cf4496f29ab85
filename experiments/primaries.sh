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
start=$(date +%s)
stage() {
  echo "primaries: stage $1 ($(( $(date +%s) - start )) s so far)"
  python -m smoothmax sweep --config "configs/primaries.py:$1" --workdir "$SMOOTHMAX_PRIMARIES_DIR" \
    --no-progress --no-report
}
choose() { python experiments/primaries.py choose "$SMOOTHMAX_PRIMARIES_DIR"; }
extend() {  # a row whose best rate is an edge of those tried gets the next one, until none is
  for _ in 1 2 3 4; do stage extend; choose; done
}
for s in $stages; do
  stage "$s"; choose
  case "$s" in tune|tune-r5) extend ;; esac
done
python experiments/primaries.py report "$SMOOTHMAX_PRIMARIES_DIR"
echo "primaries: done in $(( $(date +%s) - start )) s"
