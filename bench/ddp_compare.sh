#!/usr/bin/env bash
# Data-parallel training throughput, Strata vs PyTorch's Python DDP, side by
# side in one run: same model, per-rank batch, optimizer and threads per rank
# (1). Strata runs with gloo (what PyTorch uses) and, at 2 ranks, with mpi
# and with the default recipe's backend (auto).
# Prints a markdown table with the ratios.
#
#   bench/ddp_compare.sh [STEPS]      (run from the repository root after launch/build)
#
# Strata's figure is the global samples/s from metrics.jsonl, averaged over
# the train records after the first (warm-up); PyTorch's is timed the same
# way after 50 warm-up steps. Each configuration runs REPS times with the two
# sides interleaved (Strata, PyTorch, Strata, ...), so drift on a shared
# machine hits both alike; the table shows each side's best and the median
# of the per-repetition ratios.
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

# strata_rate NP MODEL [overrides...] -> samples/s (one run)
strata_rate() {
  local np=$1 model=$2; shift 2
  rm -rf "$TMP/run"
  local cmd=("$BIN" recipes/fashion_mnist_ddp.yaml "run.dir=$TMP/run" "model.name=$model"
    run.threads=1 "train.max_steps=$STEPS" run.log_every=50 data.augment.hflip=false
    train.eval_every=100000 "$@")
  if [ "$np" -gt 1 ]; then
    mpirun -np "$np" --oversubscribe --bind-to none "${cmd[@]}" >/dev/null 2>&1
  else
    "${cmd[@]}" >/dev/null 2>&1
  fi
  grep '"kind":"train"' "$TMP/run/metrics.jsonl" | tail -n +2 |
    sed 's/.*"samples_per_s":\([0-9.e+]*\).*/\1/' |
    awk '{s+=$1; n++} END {printf "%.1f", s/n}'
}

# torch_rate NP MODEL -> samples/s (one run)
torch_rate() {
  "$RUN" -n "$1" -- "$PY" bench/pytorch_ddp.py --model "$2" --batch 64 \
    --steps "$STEPS" --threads 1 2>/dev/null | awk '/samples_per_s/ {print $2}'
}

max() { printf '%s\n' "$@" | sort -g | tail -1; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# Main table. At 2 ranks Strata runs with the default recipe as it is
# (distributed.backend: auto, which under mpirun on a CPU host is mpi) and
# once per backend: gloo (the backend PyTorch uses here: Debian's and PyPI's
# torch are built without MPI) and mpi (Open MPI's shared-memory transport,
# which only Strata can use).
echo "| model | ranks | Strata default recipe (best) | Strata gloo (best) | Strata mpi (best) | PyTorch DDP gloo (best) | default / PyTorch | median per-run ratio | gloo / PyTorch | median per-run ratio | mpi / PyTorch | median per-run ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for model in cnn mlp; do
  for np in 1 2; do
    ds=() ss=() ms=() ts=() rd=() rs=() rm=()
    for rep in $(seq "$REPS"); do
      s=$(strata_rate "$np" "$model" distributed.backend=gloo)
      t=$(torch_rate "$np" "$model")
      ss+=("$s"); ts+=("$t"); rs+=("$(ratio "$s" "$t")")
      if [ "$np" -gt 1 ]; then
        m=$(strata_rate "$np" "$model" distributed.backend=mpi)
        ms+=("$m"); rm+=("$(ratio "$m" "$t")")
        d=$(strata_rate "$np" "$model")
        ds+=("$d"); rd+=("$(ratio "$d" "$t")")
      fi
    done
    sb=$(max "${ss[@]}"); tb=$(max "${ts[@]}")
    if [ "$np" -gt 1 ]; then
      mb=$(max "${ms[@]}"); db=$(max "${ds[@]}")
      echo "| $model | $np | $db | $sb | $mb | $tb | $(ratio "$db" "$tb") | $(median "${rd[@]}") | $(ratio "$sb" "$tb") | $(median "${rs[@]}") | $(ratio "$mb" "$tb") | $(median "${rm[@]}") |"
    else
      echo "| $model | $np | $sb | (no communication) | | $tb | $(ratio "$sb" "$tb") | $(median "${rs[@]}") | | | | |"
    fi
  done
done

echo
echo "Strata, 2 ranks, gloo: overlap and bucket size (best of $REPS):"
echo "| model | overlap on, 25 MB buckets | overlap off | overlap on, 0.25 MB buckets |"
echo "|---|---|---|---|"
for model in cnn mlp; do
  a=() b=() c=()
  for rep in $(seq "$REPS"); do
    a+=("$(strata_rate 2 "$model" distributed.backend=gloo)")
    b+=("$(strata_rate 2 "$model" distributed.backend=gloo distributed.overlap=false)")
    c+=("$(strata_rate 2 "$model" distributed.backend=gloo distributed.bucket_mb=0.25)")
  done
  echo "| $model | $(max "${a[@]}") | $(max "${b[@]}") | $(max "${c[@]}") |"
done
