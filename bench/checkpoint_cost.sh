#!/usr/bin/env bash
# What frequent checkpoints cost a training run, side by side in one run:
# the same strata-train run (the MLP on Fashion-MNIST, 1 thread, 600
# steps) with no periodic checkpoints, with one every 10 steps written by
# the training thread (checkpoint.async=false), and with one every 10 steps
# written in the background (checkpoint.async=true, the default: a copy in
# host memory at the step, the files on another thread; Note [Asynchronous
# checkpoints]). The figure is the run's wall time from its summary record
# (final evaluation and checkpoint included, the same in all three); each
# configuration runs REPS times, interleaved, and the table shows medians
# and the ratios to the run without periodic checkpoints.
#
#   bench/checkpoint_cost.sh [MODEL] [STEPS]   (after launch/build)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mlp}
STEPS=${2:-600}
REPS=${REPS:-5}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
wall() {  # wall OVERRIDES... -> seconds
  rm -rf "$TMP/run"
  build/bin/strata-train recipes/fashion_mnist.yaml run.dir="$TMP/run" model.name="$MODEL" \
    run.threads=1 train.max_steps="$STEPS" train.eval_every=100000 run.log_every=50 \
    checkpoint.every_minutes=0 data.augment.hflip=false "$@" > /dev/null 2>&1
  tail -1 "$TMP/run/metrics.jsonl" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['wall_s'])"
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
none=() sync=() async=()
for rep in $(seq "$REPS"); do
  none+=("$(wall checkpoint.every_steps=100000)")
  sync+=("$(wall checkpoint.every_steps=10 checkpoint.async=false)")
  async+=("$(wall checkpoint.every_steps=10 checkpoint.async=true)")
done
n=$(median "${none[@]}"); s=$(median "${sync[@]}"); a=$(median "${async[@]}")
echo "| $MODEL, $STEPS steps | wall s (median of $REPS) | vs no periodic checkpoints |"
echo "|---|---|---|"
echo "| no periodic checkpoints | $n | 1.00 |"
awk -v n="$n" -v s="$s" -v a="$a" 'BEGIN {
  printf "| every 10 steps, written by the training thread | %s | %.2f |\n", s, s / n
  printf "| every 10 steps, written in the background | %s | %.2f |\n", a, a / n
}'
