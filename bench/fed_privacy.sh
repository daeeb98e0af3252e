#!/usr/bin/env bash
# Accuracy against epsilon for client-level DP-FedAvg on Fashion-MNIST
# (recipes/fed_fmnist_dp.yaml): for each epsilon the accountant plans the
# noise multiplier that spends it over the rounds (strata-fedserver privacy),
# strata-fedsim runs the federation with it, and the non-private run of the
# same population, rounds and server optimizer is the reference. Then local
# DP (federated.privacy.mode: local) at LOCAL_EPSILONS: each client clips its
# update to LOCAL_CLIP and adds noise planned so that 2 x ROUNDS x PER_ROUND /
# POPULATION updates (twice what a client sends on average) spend the
# client's epsilon (sampling rate 1, sensitivity 2 C); a client stops at its
# budget. Prints the final test accuracy, the epsilon the run (central) or its
# clients (local: the largest) spent and the gap to the non-private run.
#
#   bench/fed_privacy.sh [OUT_DIR] [POPULATION] [PER_ROUND] [ROUNDS] [EPSILONS] [LOCAL_EPSILONS]
#   (defaults: /tmp/fed_privacy, 1000 clients, 100 per round, 100 rounds,
#   "1 3 8", "8 100 1000"; delta 1e-5; LOCAL_CLIP=0.25 in the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fed_privacy}
N=${2:-1000}
M=${3:-100}
R=${4:-100}
EPSILONS=${5:-1 3 8}
LOCAL_EPSILONS=${6-8 100 1000}
LOCAL_CLIP=${LOCAL_CLIP:-0.25}
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
RELEASES=$(( (2 * R * M + N - 1) / N ))
for e in $LOCAL_EPSILONS; do
  zeff=$("$B/strata-fedserver" privacy --rate 1 --rounds "$RELEASES" --epsilon "$e" | awk '{print $3}')
  z=$(/usr/bin/python3 -c "print(round(2 * $zeff, 4))")
  run "local-eps-$e" federated.privacy.mode=local federated.privacy.adaptive_clip=false \
    federated.privacy.clip_norm="$LOCAL_CLIP" federated.privacy.noise_multiplier="$z" \
    federated.privacy.target_epsilon="$e"
  echo "$z" >"$OUT/local-eps-$e.z"
done

/usr/bin/python3 - "$OUT" "$N" "$M" "$R" "$EPSILONS" "$LOCAL_EPSILONS" "$RELEASES" "$LOCAL_CLIP" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, n, m, r, eps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split()
local_eps, releases, local_clip = sys.argv[6].split(), sys.argv[7], sys.argv[8]
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
for e in local_eps:
    s, v = summary(f"local-eps-{e}")
    z = open(os.path.join(out, f"local-eps-{e}.z")).read().strip()
    c = json.load(open(os.path.join(out, f"local-eps-{e}", "clients.json")))
    print(f"| local epsilon {e} (clip {local_clip}, planned for {releases} updates per client) | {z} | "
          f"{c['epsilon_max']:.3f} per client (max) | {s['version'] - 1} | {s['accuracy']:.4f} | "
          f"{100 * (base['accuracy'] - s['accuracy']):.2f} | {wall(f'local-eps-{e}')} |")
PY
