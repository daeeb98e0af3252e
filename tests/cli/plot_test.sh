#!/usr/bin/env bash
# launch/strata-plot on real runs: two strata-train runs with other learning
# rates overlaid into one PNG, a federated run's versions, an online HBP
# run's errors and alpha per depth, and the errors a
# user meets (no such run, a directory that is not one) with exit 2.
#   plot_test.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1
SRC=$2
PLOT=$SRC/launch/strata-plot
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
pass=0
fails=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
png() {  # png FILE: a PNG of a plausible size
  [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && [ "$(stat -c %s "$1")" -gt 10000 ]
}
for lr in 0.05 0.01; do
  "$BIN/strata-train" "$SRC/recipes/fashion_mnist.yaml" run.dir="$WORK/lr$lr" model.name=mlp \
    optimizer.lr=$lr data.train_subset=2000 data.test_subset=500 train.max_steps=20 \
    run.log_every=2 train.eval_every=10 run.threads=2 > "$WORK/lr$lr.out" 2>&1 ||
    { cat "$WORK/lr$lr.out"; bad "training lr $lr"; }
done
out=$("$PLOT" "$WORK/lr0.05" "$WORK/lr0.01" -o "$WORK/both.png" 2>&1)
if [ $? -eq 0 ] && png "$WORK/both.png" && grep -q "5 panel(s), 2 run(s)" <<<"$out"; then ok; else bad "two runs: $out"; fi
# A crash's torn last line is skipped, not fatal; the default output path.
printf '{"kind":"train","st' >> "$WORK/lr0.05/metrics.jsonl"
out=$("$PLOT" "$WORK/lr0.05" 2>&1)
if [ $? -eq 0 ] && png "$WORK/lr0.05/metrics.png" && grep -q "skipped 1 line" <<<"$out"; then ok; else bad "torn line: $out"; fi
"$BIN/strata-fedsim" "$SRC/recipes/fed_fmnist_sync.yaml" run.dir="$WORK/fed" data.train_subset=2000 \
  data.test_subset=500 federated.sim.clients=4 federated.sim.partition=iid federated.sync.rounds=3 \
  federated.sync.clients_per_round=4 federated.sync.over_selection=0 federated.sync.local_epochs=1 \
  run.threads=2 > "$WORK/fed.out" 2>&1 || { cat "$WORK/fed.out"; bad "fedsim"; }
out=$("$PLOT" "$WORK/fed" -o "$WORK/fed.png" 2>&1)
if [ $? -eq 0 ] && png "$WORK/fed.png" && grep -q "2 panel(s), 1 run(s)" <<<"$out"; then ok; else bad "federated: $out"; fi
# An online (prequential) HBP run: windowed and cumulative error against the
# instances, and alpha per depth (train loss, lr and throughput besides).
"$BIN/strata-train" "$SRC/recipes/online_hbp.yaml" run.dir="$WORK/online" data.instances=3000 \
  model.depth=4 run.log_every=500 run.threads=2 > "$WORK/online.out" 2>&1 ||
  { cat "$WORK/online.out"; bad "online run"; }
out=$("$PLOT" "$WORK/online" -o "$WORK/online.png" 2>&1)
if [ $? -eq 0 ] && png "$WORK/online.png" && grep -q "6 panel(s), 1 run(s)" <<<"$out"; then ok; else bad "online: $out"; fi
out=$("$PLOT" "$WORK/nope" 2>&1); rc=$?
if [ $rc -eq 2 ] && grep -q "^strata-plot: error: '$WORK/nope' is not a directory" <<<"$out"; then ok; else bad "missing run: $rc $out"; fi
mkdir "$WORK/empty"
out=$("$PLOT" "$WORK/empty" 2>&1); rc=$?
if [ $rc -eq 2 ] && grep -q "has no metrics.jsonl; is it a run directory" <<<"$out"; then ok; else bad "not a run: $rc $out"; fi
out=$("$PLOT" 2>&1); rc=$?
if [ $rc -eq 2 ] && grep -q "usage: strata-plot" <<<"$out"; then ok; else bad "no arguments: $rc $out"; fi
echo "plot: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
