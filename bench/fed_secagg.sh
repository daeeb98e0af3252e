#!/usr/bin/env bash
# Secure aggregation (federated.secagg), two measurements:
#  1. cost: build/bin/fed_secagg_bench -- round time and bytes per client of
#     secure aggregation (every other client, and SecAgg+ neighbourhoods of
#     K) against the plain sync round, for CLIENTS per round;
#  2. accuracy: recipes/fed_fmnist_sync.yaml under strata-fedsim as it is,
#     and with secure aggregation while 10% of the selected clients drop out
#     after their masked input (federated.sim.dropout=0.1): final test
#     accuracy and the mean of the last five versions, side by side.
#
#   bench/fed_secagg.sh [OUT_DIR] [ROUNDS_FOR_COST] [CLIENTS] [K] [SKIP_ACCURACY]
#   (defaults: /tmp/fed_secagg, 3, "10,50,100,200", "16", 0; finished parts of
#   OUT_DIR are kept, so a rerun measures only what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fed_secagg}
ROUNDS=${2:-3}
CLIENTS=${3:-10,50,100,200}
K=${4:-16}
SKIP_ACCURACY=${5:-0}
B=${STRATA_BUILD_DIR:-build}/bin
[ -x "$B/fed_secagg_bench" ] || { echo "fed_secagg.sh: build first (launch/build)" >&2; exit 2; }
mkdir -p "$OUT"

echo "## cost: $ROUNDS rounds per row"
if [ ! -s "$OUT/cost.md" ]; then  # a rerun keeps what was measured
  STRATA_LOG_LEVEL=warn "$B/fed_secagg_bench" "$ROUNDS" "$CLIENTS" "$K" >"$OUT/cost.md.tmp"
  mv "$OUT/cost.md.tmp" "$OUT/cost.md"
fi
cat "$OUT/cost.md"
[ "$SKIP_ACCURACY" = 1 ] && exit 0

run() {  # NAME OVERRIDES...
  local name=$1 dir="$OUT/$1"; shift
  if grep -q '"kind":"summary"' "$dir/metrics.jsonl" 2>/dev/null; then return 0; fi
  rm -rf "$dir"
  SECONDS=0
  "$B/strata-fedsim" recipes/fed_fmnist_sync.yaml run.dir="$dir" "$@" >"$dir.log" 2>&1 ||
    { echo "failed: $name ($dir.log)" >&2; exit 1; }
  echo "$SECONDS" >"$dir.wall"
  echo "done: $name: $(tail -1 "$dir.log")"
}
run plain
run secagg federated.secagg.enabled=true federated.secagg.max_samples=2000 federated.sim.dropout=0.1

/usr/bin/python3 - "$OUT" <<'PY' | tee "$OUT/accuracy.md"
import json, os, sys
out = sys.argv[1]
print("| run | versions | final accuracy | mean of the last 5 | not applied | dropped out | wall s |")
print("|---|---|---|---|---|---|---|")
for name in ("plain", "secagg"):
    recs = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl"))]
    v = [r for r in recs if r["kind"] == "version" and "accuracy" in r]
    s = [r for r in recs if r["kind"] == "summary"][-1]
    last5 = sum(r["accuracy"] for r in v[-5:]) / len(v[-5:])
    skipped = sum(1 for r in recs if r["kind"] == "version" and "not_applied" in r)
    c = json.load(open(os.path.join(out, name, "clients.json")))
    wall = open(os.path.join(out, name + ".wall")).read().strip()
    print(f"| {name} | {s['version'] - 1} | {s['accuracy']:.4f} | {last5:.4f} | {skipped} | "
          f"{c['dropped_out']} of {sum(c['submitted']):.0f} updates | {wall} |")
PY
