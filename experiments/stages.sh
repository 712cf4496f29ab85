# Sourced by study.sh and primaries.sh: a staged study is sweep stages into one workdir with choices between
# them. Set NAME (for the log), CONFIG (the sweep config, "path.py:<prefix>" before the stage name), WORKDIR
# and CHOOSER (the script whose `choose` and `report` read the workdir), then call these.
start=$(date +%s)
stage() {
  echo "$NAME: stage $1 ($(( $(date +%s) - start )) s so far)"
  python -m smoothmax sweep --config "$CONFIG$1" --workdir "$WORKDIR" --no-progress --no-report
}
choose() { python "$CHOOSER" choose "$WORKDIR"; }
extend() {  # a row whose best rate is an edge of those tried gets the next one, until none is
  for _ in 1 2 3 4; do stage extend; choose; done
}
finish() { python "$CHOOSER" report "$WORKDIR"; echo "$NAME: done in $(( $(date +%s) - start )) s"; }
