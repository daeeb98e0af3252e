#!/usr/bin/env bash
# Mixed precision on the CPU: step time of the GPT and CNN recipes in fp32
# and bf16 (autocast), side by side in one run, with the ratio.
#
#   bench/precision_cpu.sh [STEPS]     (after launch/build; default 20 steps)
#
# Each figure is samples/s from the train records of metrics.jsonl after the
# first (warm-up) record.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rate() {  # RECIPE PRECISION overrides...
  local recipe=$1 prec=$2; shift 2
  rm -rf "$TMP/run"
  build/bin/strata-train "recipes/$recipe" "run.dir=$TMP/run" "train.precision=$prec" \
    "train.max_steps=$STEPS" "run.log_every=$((STEPS / 4))" train.eval_every=1000000 \
    data.test_subset=64 checkpoint.every_steps=1000000 "$@" >/dev/null 2>&1
  grep '"kind":"train"' "$TMP/run/metrics.jsonl" | tail -n +2 |
    sed 's/.*"samples_per_s":\([0-9.e+]*\).*/\1/' | awk '{s+=$1; n++} END {printf "%.1f", s/n}'
}
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; flags: $(grep -o -w 'avx512_bf16\|amx_bf16\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo ""
echo "| recipe | fp32 samples/s | bf16 samples/s | bf16 / fp32 |"
echo "| --- | ---: | ---: | ---: |"
for recipe in gpt_tiny.yaml fashion_mnist.yaml; do
  f=$(rate "$recipe" fp32)
  b=$(rate "$recipe" bf16)
  echo "| $recipe | $f | $b | $(awk -v a="$b" -v b="$f" 'BEGIN {printf "%.2f", a / b}') |"
done
