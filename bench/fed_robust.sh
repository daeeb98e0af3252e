#!/usr/bin/env bash
# Robust aggregation under attack, side by side in one run: the sync
# Fashion-MNIST recipe (100 clients, Dirichlet 0.5, 10 per round) clean with
# fedavg, then with 20% of the clients sending scaled garbage (their update
# x -100 by default) under fedavg, median and trimmed_mean. Prints a table of
# the final and best test accuracy per run.
#
#   bench/fed_robust.sh [ROUNDS] [extra overrides...]   (after launch/build; default 50 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-50}
shift || true
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

run() {  # NAME overrides...
  local name=$1; shift
  build/bin/strata-fedsim recipes/fed_fmnist_sync.yaml "run.dir=$TMP/$name" \
    "federated.sync.rounds=$ROUNDS" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
  local final best
  final=$(grep '"kind":"summary"' "$TMP/$name/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/')
  best=$(grep '"kind":"version"' "$TMP/$name/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/' | sort -g | tail -1)
  echo "| $name | $final | $best | $(sed 's/.*, \([0-9hms]*\); run directory.*/\1/' "$TMP/$name.out") |"
}

ATTACK=(federated.sim.malicious_fraction=0.2 federated.sim.attack=sign_flip federated.sim.attack_scale=100)
echo "| run | final accuracy | best accuracy | wall |"
echo "|---|---|---|---|"
run clean_fedavg "$@"
run attacked_fedavg "${ATTACK[@]}" "$@"
run attacked_median federated.strategy=median "${ATTACK[@]}" "$@"
run attacked_trimmed_mean federated.strategy=trimmed_mean federated.trim_fraction=0.3 "${ATTACK[@]}" "$@"
