#!/usr/bin/env bash
# Data-parallel training throughput, Strata vs PyTorch's Python DDP, side by
# side in one run: same model, per-rank batch, optimizer and threads per rank
# (1), gloo on both sides. Prints a markdown table with the ratios.
#
#   bench/ddp_compare.sh [STEPS]      (run from the repository root after launch/build)
#
# Strata's figure is the global samples/s from metrics.jsonl, averaged over
# the train records after the first (warm-up); PyTorch's is timed the same
# way after 50 warm-up steps. Each configuration runs REPS times and the best
# is kept, for both sides alike.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
REPS=${REPS:-2}
BIN=build/bin/strata-train
PY=${STRATA_PYTHON:-/usr/bin/python3}
RUN=launch/strata-run
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# strata_rate NP MODEL [overrides...] -> samples/s
strata_rate() {
  local np=$1 model=$2; shift 2
  local best=0
  for rep in $(seq "$REPS"); do
    rm -rf "$TMP/run"
    local cmd=("$BIN" recipes/fashion_mnist_ddp.yaml "run.dir=$TMP/run" "model.name=$model"
      run.threads=1 "train.max_steps=$STEPS" run.log_every=50 data.augment.hflip=false
      train.eval_every=100000 "$@")
    if [ "$np" -gt 1 ]; then
      mpirun -np "$np" --oversubscribe --bind-to none "${cmd[@]}" >/dev/null 2>&1
    else
      "${cmd[@]}" >/dev/null 2>&1
    fi
    local r
    r=$(grep '"kind":"train"' "$TMP/run/metrics.jsonl" | tail -n +2 |
        sed 's/.*"samples_per_s":\([0-9.e+]*\).*/\1/' |
        awk '{s+=$1; n++} END {printf "%.1f", s/n}')
    best=$(awk -v a="$best" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
  done
  echo "$best"
}

# torch_rate NP MODEL -> samples/s
torch_rate() {
  local np=$1 model=$2 best=0
  for rep in $(seq "$REPS"); do
    local r
    r=$("$RUN" -n "$np" -- "$PY" bench/pytorch_ddp.py --model "$model" \
        --batch 64 --steps "$STEPS" --threads 1 2>/dev/null | awk '/samples_per_s/ {print $2}')
    best=$(awk -v a="$best" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
  done
  echo "$best"
}

echo "| model | ranks | Strata samples/s | PyTorch DDP samples/s | Strata / PyTorch |"
echo "|---|---|---|---|---|"
for model in cnn mlp; do
  for np in 1 2; do
    s=$(strata_rate "$np" "$model")
    t=$(torch_rate "$np" "$model")
    echo "| $model | $np | $s | $t | $(awk -v a="$s" -v b="$t" 'BEGIN {printf "%.2f", a/b}') |"
  done
done

echo
echo "Strata, 2 ranks, gradient bucketing and overlap:"
echo "| model | variant | samples/s |"
echo "|---|---|---|"
for model in cnn mlp; do
  echo "| $model | overlap on, 25 MB buckets | $(strata_rate 2 "$model") |"
  echo "| $model | overlap off | $(strata_rate 2 "$model" distributed.overlap=false) |"
  echo "| $model | overlap on, 0.25 MB buckets | $(strata_rate 2 "$model" distributed.bucket_mb=0.25) |"
done
