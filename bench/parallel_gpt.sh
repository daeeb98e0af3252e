#!/usr/bin/env bash
# Tokens/s of the 3D-parallel GPT recipe (recipes/gpt_tp2_pp2.yaml) in every
# layout of one to eight ranks, side by side in one run, with the ratio to
# one process. Same model, global batch (32 windows of 128 bytes), optimizer.
#
#   bench/parallel_gpt.sh [STEPS]     (after launch/build; default 30 steps)
#
# Each figure is tokens/s from the train records of metrics.jsonl after the
# first (warm-up) one. Ranks share this host's cores (run.threads = cores /
# ranks, at least 1): on a host with fewer cores than ranks the figures
# measure the parallelism's overhead, not a speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CORES=$(nproc)

# rate NP DP TP PP [overrides...] -> tokens/s
rate() {
  local np=$1 dp=$2 tp=$3 pp=$4; shift 4
  rm -rf "$TMP/run"
  local threads=$((CORES / np)); [ "$threads" -ge 1 ] || threads=1
  local cmd=(build/bin/strata-train recipes/gpt_tp2_pp2.yaml "run.dir=$TMP/run"
    "run.threads=$threads" "train.max_steps=$STEPS" "run.log_every=$((STEPS / 3))"
    train.eval_every=1000000 checkpoint.every_steps=1000000 data.test_subset=64
    "data.batch_size=$((32 / dp))" "distributed.tensor_parallel=$tp"
    "distributed.pipeline_parallel.stages=$pp" "$@")
  if [ "$np" -gt 1 ]; then
    mpirun -np "$np" --oversubscribe --bind-to none "${cmd[@]}" >/dev/null 2>&1
  else
    "${cmd[@]}" >/dev/null 2>&1
  fi
  grep '"kind":"train"' "$TMP/run/metrics.jsonl" | tail -n +2 |
    sed 's/.*"tokens_per_s":\([0-9.e+]*\).*/\1/' | awk '{s+=$1; n++} END {printf "%.0f", s/n}'
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $CORES cores; $STEPS steps of 32 x 128 tokens"
echo ""
echo "| layout | ranks | tokens/s | vs 1 process |"
echo "| --- | ---: | ---: | ---: |"
base=$(rate 1 1 1 1)
echo "| 1 process | 1 | $base | 1.00 |"
row() {  # NAME NP DP TP PP [overrides]
  local name=$1; shift
  local r; r=$(rate "$@")
  echo "| $name | $1 | $r | $(awk -v a="$r" -v b="$base" 'BEGIN {printf "%.2f", a / b}') |"
}
row "dp=2" 2 2 1 1
row "tp=2" 2 1 2 1
row "pp=2 (1f1b, 4 microbatches)" 2 1 1 2
row "tp=2 x pp=2" 4 1 2 2
row "dp=2 x tp=2 x pp=2" 8 2 2 2
