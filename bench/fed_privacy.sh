#!/usr/bin/env bash
# Accuracy against epsilon for client-level DP-FedAvg on Fashion-MNIST
# (recipes/fed_fmnist_dp.yaml): for each epsilon the accountant plans the
# noise multiplier that spends it over the rounds (strata-fedserver privacy),
# strata-fedsim runs the federation with it, and the non-private run of the
# same population, rounds and server optimizer is the reference. Prints the
# final test accuracy, the epsilon the run spent and the gap to the
# non-private run.
#
#   bench/fed_privacy.sh [OUT_DIR] [POPULATION] [PER_ROUND] [ROUNDS] [EPSILONS]
#   (defaults: /tmp/fed_privacy, 1000 clients, 100 per round, 100 rounds,
#   "1 3 8"; delta 1e-5)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fed_privacy}
N=${2:-1000}
M=${3:-100}
R=${4:-100}
EPSILONS=${5:-1 3 8}
B=${STRATA_BUILD_DIR:-build}/bin
[ -x "$B/strata-fedsim" ] || { echo "fed_privacy.sh: build first (launch/build)" >&2; exit 2; }
mkdir -p "$OUT"
RATE=$(/usr/bin/python3 -c "print($M / $N)")
common=(federated.sim.clients="$N" federated.sync.clients_per_round="$M"
        federated.sync.rounds="$R" federated.privacy.population="$N")

run() {  # NAME OVERRIDES...
  local name=$1 dir="$OUT/$1"; shift
  if grep -q '"kind":"summary"' "$dir/metrics.jsonl" 2>/dev/null; then return 0; fi
  rm -rf "$dir"
  SECONDS=0
  "$B/strata-fedsim" recipes/fed_fmnist_dp.yaml run.dir="$dir" "${common[@]}" "$@" >"$dir.log" 2>&1 ||
    { echo "failed: $name ($dir.log)" >&2; exit 1; }
  echo "$SECONDS" >"$dir.wall"
  echo "done: $name: $(tail -1 "$dir.log")"
}

run nonprivate federated.privacy.mode=none
for e in $EPSILONS; do
  z=$("$B/strata-fedserver" privacy --rate "$RATE" --rounds "$R" --epsilon "$e" | awk '{print $3}')
  run "eps-$e" federated.privacy.noise_multiplier="$z" federated.privacy.target_epsilon="$e"
  echo "$z" >"$OUT/eps-$e.z"
done

/usr/bin/python3 - "$OUT" "$N" "$M" "$R" "$EPSILONS" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, n, m, r, eps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split()
def summary(name):
    recs = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl"))]
    return [x for x in recs if x["kind"] == "summary"][-1], [x for x in recs if x["kind"] == "version"]
print(f"Fashion-MNIST, {n} clients (IID, {60000 // n} images each), {m} per round (q = {m / n}), "
      f"{r} rounds, MLP 784-64-10, 1 local epoch of batch 16, SGD lr 0.05; server FedAvgM "
      f"(momentum 0.9); DP: adaptive clipping to the median norm, delta 1e-5.\n")
print("| run | noise multiplier | epsilon spent | versions | test accuracy | gap to non-private (points) | wall s |")
print("|---|---|---|---|---|---|---|")
base, _ = summary("nonprivate")
wall = lambda name: open(os.path.join(out, name + ".wall")).read().strip()
print(f"| non-private | - | inf | {base['version'] - 1} | {base['accuracy']:.4f} | - | {wall('nonprivate')} |")
for e in eps:
    s, v = summary(f"eps-{e}")
    z = open(os.path.join(out, f"eps-{e}.z")).read().strip()
    print(f"| epsilon {e} | {z} | {s['epsilon']:.3f} | {s['version'] - 1} | {s['accuracy']:.4f} | "
          f"{100 * (base['accuracy'] - s['accuracy']):.2f} | {wall(f'eps-{e}')} |")
PY
