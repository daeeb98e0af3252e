#!/usr/bin/env bash
# Recovery after concept drift on Fashion-MNIST (fmnist_drift: labels
# permuted anew at two points of the stream, abrupt): HBP against plain
# online backprop (OGD, model.hbp.hedge=false) at the same depth, batch 1,
# one pass, test-then-train. Reports for each drift point the windowed error
# before it, the worst window after it, and the instances until a window is
# back within 1 point of the level before the drift.
#
#   bench/online_drift.sh [OUT_DIR] [INSTANCES] [JOBS]
#   (defaults: /tmp/online_drift, 120000 with drifts at 1/3 and 2/3, 2 at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/online_drift}
N=${2:-120000}
JOBS=${3:-2}
BIN=${STRATA_BUILD_DIR:-build}/bin/strata-train
[ -x "$BIN" ] || { echo "online_drift.sh: build first (launch/build)" >&2; exit 2; }
mkdir -p "$OUT"
D1=$((N / 3))
D2=$((2 * N / 3))

one() {
  local method=$1 L=$2
  local dir="$OUT/$method-$L"
  if grep -q '"kind":"summary"' "$dir/metrics.jsonl" 2>/dev/null; then return 0; fi
  rm -rf "$dir"
  local hedge=true
  [ "$method" = ogd ] && hedge=false
  "$BIN" recipes/online_hbp.yaml run.dir="$dir" data.name=fmnist_drift data.instances="$N" \
    "data.drift_at=[$D1, $D2]" data.drift=permute model.depth="$L" model.hbp.hedge=$hedge \
    run.log_every=1000 checkpoint.every_steps=0 checkpoint.every_minutes=0 >"$dir.log" 2>&1 ||
    { echo "failed: $method $L ($dir.log)" >&2; return 1; }
  echo "done: $method-$L: $(tail -1 "$dir.log")"
}
export -f one
export OUT N BIN D1 D2
printf '%s\n' "hbp 4" "ogd 4" "hbp 8" "ogd 8" "hbp 20" "ogd 20" | xargs -P "$JOBS" -L 1 bash -c 'one $0 $1'

/usr/bin/python3 - "$OUT" "$N" "$D1" "$D2" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, n, d1, d2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"fmnist_drift: {n:,} instances of the 70,000 Fashion-MNIST images (784 features, 10 "
      f"classes), labels permuted anew at {d1:,} and {d2:,}; batch 1, SGD lr 0.01, L x 100 "
      "ReLU network; windows of 1,000 instances.\n")
print("| method | L | final online error | drift at | window before | worst window after | "
      "instances to within 1 point |")
print("|---|---|---|---|---|---|---|")
for L in (4, 8, 20):
    for m in ("hbp", "ogd"):
        recs = [json.loads(l) for l in open(os.path.join(out, f"{m}-{L}", "metrics.jsonl"))]
        w = [(r["instances"], 100 * r["window_error"]) for r in recs if r["kind"] == "online"]
        final = 100 * [r for r in recs if r["kind"] == "summary"][-1]["online_error"]
        for t, until in ((d1, d2), (d2, n)):
            before = [e for i, e in w if i <= t][-1]
            after = [(i, e) for i, e in w if i - 1000 >= t and i <= until]
            worst = max(e for _, e in after) if after else float("nan")
            rec = next((i - t for i, e in after if e <= before + 1.0), None)
            print(f"| {m.upper()} | {L} | {final:.2f} | {t:,} | {before:.2f} | {worst:.2f} | "
                  f"{'not within the stream' if rec is None else f'{rec:,}'} |")
PY
