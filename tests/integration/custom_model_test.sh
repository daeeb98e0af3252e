#!/usr/bin/env bash
# examples/custom_model as a user builds it: Strata installed with
# cmake --install, the example configured against the installed tree with
# find_package(Strata), its own model, dataset and optimizer trained in one
# process and under mpirun -np 2, its optimizer checkpointed and resumed
# under a 2-stage pipeline exactly as the uninterrupted run, and its model
# federated by Strata's server and edge clients.
#   custom_model_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "${1:?usage: custom_model_test.sh BUILD_DIR SOURCE_DIR}" && pwd)
SRC=$(cd "${2:?usage: custom_model_test.sh BUILD_DIR SOURCE_DIR}" && pwd)
PREFIX=$BUILD/strata-install
EX=$BUILD/custom_model
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
step() { echo "== $*"; }

step "install Strata to $PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" > "$WORK/install.log"
test -f "$PREFIX/lib/cmake/Strata/StrataConfig.cmake"
test -f "$PREFIX/include/strata/trainer/train_step.h"

step "configure and build the example against the installed tree"
GEN=(); command -v ninja > /dev/null && GEN=(-G Ninja)
launcher=(); command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$SRC/examples/custom_model" -B "$EX" "${GEN[@]}" "${launcher[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" > "$WORK/configure.log" \
  || { cat "$WORK/configure.log"; exit 1; }
cmake --build "$EX" -j2 > "$WORK/build.log" || { tail -50 "$WORK/build.log"; exit 1; }

T=$EX/custom-train
R=$SRC/examples/custom_model/recipe.yaml
SMALL=(run.threads=1 data.train_subset=6400 data.test_subset=1000 run.log_every=10)
# The accuracy on the test images, from the summary record.
acc() { python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["accuracy"])' "$1/metrics.jsonl"; }
above() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$1" "$2"; }

step "--list shows the registered parts"
"$T" --list | tee "$WORK/list.txt"
grep -q 'wide_mlp  classification, pipeline stages' "$WORK/list.txt"
grep -q 'fmnist14  classification' "$WORK/list.txt"
grep -q 'signum' "$WORK/list.txt"

step "one process"
"$T" "$R" run.dir="$WORK/one" "${SMALL[@]}"
a=$(acc "$WORK/one"); echo "accuracy $a"; above "$a" 0.70

step "mpirun -np 2 (data parallel)"
mpirun --oversubscribe --bind-to none -np 2 "$T" "$R" run.dir="$WORK/two" "${SMALL[@]}"
a=$(acc "$WORK/two"); echo "accuracy $a"; above "$a" 0.70

step "signum under a 2-stage pipeline: stopped at step 30 and resumed = straight to 60"
PP=("${SMALL[@]}" distributed.pipeline_parallel.stages=2 distributed.pipeline_parallel.microbatches=2
    checkpoint.every_steps=30)
mpirun --oversubscribe --bind-to none -np 2 "$T" "$R" run.dir="$WORK/straight" "${PP[@]}" train.max_steps=60
mpirun --oversubscribe --bind-to none -np 2 "$T" "$R" run.dir="$WORK/resumed" "${PP[@]}" train.max_steps=30
test -f "$WORK/resumed/checkpoints/step_00000030/optim-pp1-tp0.pt"
mpirun --oversubscribe --bind-to none -np 2 "$T" "$R" run.dir="$WORK/resumed" "${PP[@]}" train.max_steps=60 \
  2>&1 | tee "$WORK/resume.log"
grep -q 'resumed from .*step_00000030 at step 30' "$WORK/resume.log"
python3 - "$WORK/straight/metrics.jsonl" "$WORK/resumed/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
# Every train record, and the final evaluation (the stopped run also
# evaluated at its end, step 30, which the straight run did not).
key = lambda r: (r["kind"], r["step"], r["loss"])
ra = [key(r) for r in a if r["kind"] == "train"] + [key([r for r in a if r["kind"] == "eval"][-1])]
rb = [key(r) for r in b if r["kind"] == "train"] + [key([r for r in b if r["kind"] == "eval"][-1])]
assert ra == rb, f"resumed run differs:\n{ra}\n{rb}"
print(f"{len(ra)} records equal, final eval loss {ra[-1][2]}")
PY
/usr/bin/python3 - "$WORK/straight/model.pt" "$WORK/resumed/model.pt" <<'PY' || echo "(torch not importable here: compared the metrics only)"
import sys, torch
a, b = (torch.load(p) for p in sys.argv[1:])
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "model.pt differs"
print(f"model.pt bit for bit: {len(a)} tensors")
PY

if [ -x "$EX/custom-fedsim" ]; then
  step "federated: Strata's server and edge clients on the custom model and optimizer"
  "$EX/custom-fedsim" "$SRC/examples/custom_model/fed.yaml" run.dir="$WORK/fed" run.threads=1 \
    data.train_subset=4000 data.test_subset=1000 federated.sync.rounds=3 | tee "$WORK/fed.txt"
  grep -q 'final test accuracy' "$WORK/fed.txt"
fi
echo "custom model example: all passed"
