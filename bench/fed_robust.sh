#!/usr/bin/env bash
# Robust aggregation under attack, side by side in one run: the sync
# Fashion-MNIST recipe (100 clients, Dirichlet 0.5, 10 per round) clean with
# fedavg, then with 20% of the clients sending scaled garbage (their update
# x -100 by default) under fedavg, median and trimmed_mean. The robust runs
# clip every update to the round's median update norm
# (federated.median_norm_clip) and mix each with its nearest neighbours
# before the rule (federated.nnm_fraction 0.3: the mean of the 7 of 10
# updates closest to it), which is what keeps a coordinate-wise rule near
# the honest mean on non-IID clients; no server momentum anywhere, so the
# clean fedavg run is the baseline as it stands.
# The attacked fedavg run stops after ATTACKED_FEDAVG_ROUNDS (default 10):
# once collapsed, its clients' updates are non-finite and refused, and each
# empty round would wait out its deadline. Prints the final, mean-of-last-5
# and best test accuracy per run.
#
#   [KEEP=DIR] [RUNS="name ..."] bench/fed_robust.sh [ROUNDS] [extra overrides...]
#   (after launch/build; default 50 rounds; KEEP keeps each run's
#   metrics.jsonl; RUNS runs only the runs it names)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-50}
shift || true
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

run() {  # NAME overrides...
  local name=$1; shift
  if [[ -n ${RUNS:-} && " $RUNS " != *" $name "* ]]; then return 0; fi
  build/bin/strata-fedsim recipes/fed_fmnist_sync.yaml "run.dir=$TMP/$name" \
    "federated.sync.rounds=$ROUNDS" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
  local acc final last5 best
  acc=$(grep '"kind":"version"' "$TMP/$name/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/')
  final=$(grep '"kind":"summary"' "$TMP/$name/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/')
  last5=$(echo "$acc" | tail -5 | awk '{s += $1} END {printf "%.4f", s / NR}')
  best=$(echo "$acc" | sort -g | tail -1)
  echo "| $name | $(echo "$acc" | wc -l) | $final | $last5 | $best | $(sed 's/.*, \([0-9hms]*\); run directory.*/\1/' "$TMP/$name.out") |"
  if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$TMP/$name/metrics.jsonl" "$KEEP/$name.jsonl"; fi
}

ATTACK=(federated.sim.malicious_fraction=0.2 federated.sim.attack=sign_flip federated.sim.attack_scale=100)
DEFENCE=(federated.median_norm_clip=1 federated.nnm_fraction=0.3)
echo "| run | versions | final accuracy | mean of last 5 | best | wall |"
echo "|---|---:|---:|---:|---:|---|"
run clean_fedavg "$@"
run attacked_fedavg "${ATTACK[@]}" "federated.sync.rounds=${ATTACKED_FEDAVG_ROUNDS:-10}" \
  federated.sync.round_timeout_s=30 federated.sync.max_round_extensions=0 "$@"
run attacked_median federated.strategy=median "${DEFENCE[@]}" "${ATTACK[@]}" "$@"
run attacked_trimmed_mean federated.strategy=trimmed_mean federated.trim_fraction=0.2 \
  "${DEFENCE[@]}" "${ATTACK[@]}" "$@"
