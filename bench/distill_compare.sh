#!/usr/bin/env bash
# Knowledge distillation, side by side in one run: trains the teacher
# (recipes/fmnist_teacher.yaml, once), then the small CNN student of
# recipes/fmnist_student_distill.yaml for the same steps with and without the
# teacher, over SEEDS seeds; prints each run's test accuracy and the means.
#
#   bench/distill_compare.sh [SEEDS] [overrides for every student run...]
#   (after launch/build; default 3 seeds; TEACHER=path/model.pt skips training one)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-3}
shift || true
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BIN=build/bin/strata-train
acc() { grep '"kind":"summary"' "$1/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/'; }
if [ -z "${TEACHER:-}" ]; then
  $BIN recipes/fmnist_teacher.yaml "run.dir=$TMP/teacher" >/dev/null 2>&1
  TEACHER=$TMP/teacher/model.pt
  echo "teacher (recipes/fmnist_teacher.yaml): test accuracy $(acc "$TMP/teacher")"
fi
echo ""
echo "| seed | student alone | student distilled |"
echo "| ---: | ---: | ---: |"
alone=() distilled=()
for seed in $(seq 0 $((SEEDS - 1))); do
  $BIN recipes/fmnist_student_distill.yaml "run.dir=$TMP/alone$seed" "run.seed=$seed" \
    "distill.teacher=''" "$@" >/dev/null 2>&1
  $BIN recipes/fmnist_student_distill.yaml "run.dir=$TMP/kd$seed" "run.seed=$seed" \
    "distill.teacher=$TEACHER" "$@" >/dev/null 2>&1
  a=$(acc "$TMP/alone$seed") d=$(acc "$TMP/kd$seed")
  alone+=("$a") distilled+=("$d")
  echo "| $seed | $a | $d |"
done
mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.4f", s/NR}'; }
echo "| mean | $(mean "${alone[@]}") | $(mean "${distilled[@]}") |"
