#!/usr/bin/env bash
# Federated online learning on drifting streams: strata-fedsim with 20 async
# clients (recipes/fed_online_hbp.yaml: Fashion-MNIST shards, batch 1,
# test-then-train, labels permuted at each client's own drift points),
# Hedge Backpropagation clients -- hedge weights averaged by the server, or
# kept on each client (federated.client.keep_local=[alpha]) -- against the
# same federation of plain online backprop clients (OGD,
# model.hbp.hedge=false), at depths 4, 8 and 20. Reports the clients' mean
# online (prequential) error from each run's clients.json and checks that
# HBP's is lower than OGD's at the same depth.
#
#   bench/fed_online.sh [OUT_DIR] [VERSIONS] [DEPTHS]
#   (defaults: /tmp/fed_online, 300 versions of 10 updates of 100 instances,
#   "4 8 20"; the runs go one after another, each with 2 client threads)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fed_online}
VERSIONS=${2:-300}
DEPTHS=${3:-4 8 20}
BIN=${STRATA_BUILD_DIR:-build}/bin/strata-fedsim
[ -x "$BIN" ] || { echo "fed_online.sh: build first (launch/build)" >&2; exit 2; }
mkdir -p "$OUT"

for L in $DEPTHS; do
  for method in ogd hbp hbp-local; do
    dir="$OUT/$method-$L"
    if [ -f "$dir/clients.json" ]; then continue; fi
    rm -rf "$dir"
    args=(model.depth="$L" federated.async.versions="$VERSIONS")
    case $method in
      ogd) args+=(model.hbp.hedge=false) ;;
      hbp-local) args+=("federated.client.keep_local=[alpha]") ;;
    esac
    SECONDS=0
    "$BIN" recipes/fed_online_hbp.yaml run.dir="$dir" "${args[@]}" >"$dir.log" 2>&1 ||
      { echo "failed: $method $L ($dir.log)" >&2; exit 1; }
    echo "$SECONDS" >"$dir.wall"
    echo "done: $method-$L: $(tail -1 "$dir.log")"
  done
done

/usr/bin/python3 - "$OUT" "$DEPTHS" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, depths = sys.argv[1], [int(d) for d in sys.argv[2].split()]
names = {"ogd": ("OGD", "-"), "hbp": ("HBP", "averaged"), "hbp-local": ("HBP", "local")}
print("| method | L | alpha | clients' mean online error % | best / worst client % | "
      "instances | server test accuracy (concept 0) | wall s |")
print("|---|---|---|---|---|---|---|---|")
err, ok = {}, True
for L in depths:
    for m in ("ogd", "hbp", "hbp-local"):
        d = os.path.join(out, f"{m}-{L}")
        c = json.load(open(os.path.join(d, "clients.json")))
        recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
        acc = [r for r in recs if r["kind"] == "summary"][-1]["accuracy"]
        wall = float(open(d + ".wall").read())
        e = [100 * x for x in c["online_error"]]
        err[(m, L)] = 100 * c["online_error_mean"]
        name, alpha = names[m]
        print(f"| {name} | {L} | {alpha} | {err[(m, L)]:.2f} | {min(e):.2f} / {max(e):.2f} | "
              f"{c['online_instances']:,} | {acc:.4f} | {wall:.0f} |")
print()
for L in depths:
    for m in ("hbp", "hbp-local"):
        good = err[(m, L)] < err[("ogd", L)]
        ok &= good
        print(f"{'PASS' if good else 'FAIL'}: L={L}: {names[m][0]} (alpha {names[m][1]}) "
              f"{err[(m, L)]:.2f} < OGD {err[('ogd', L)]:.2f}")
print("\nAll checks:", "pass" if ok else "some FAIL")
PY
