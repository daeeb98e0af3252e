#!/usr/bin/env bash
# strata-export's safetensors read by the Python `safetensors` package (from
# PyPI, in a venv this script makes under the build directory; exit 77,
# ctest's skip, when PyPI cannot be reached): every tensor equal to
# model.pt's as torch.load reads it, the metadata, and the report.
#   safetensors_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
VENV=$BUILD/safetensors-venv
# shellcheck source=tests/integration/pypi_venv.sh
source "$SRC/tests/integration/pypi_venv.sh"
pypi_venv "$VENV" "safetensors" safetensors
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BUILD/bin/strata-train" "$SRC/recipes/fashion_mnist.yaml" run.dir="$WORK/run" \
  data.train_subset=1024 data.test_subset=256 train.max_steps=4 run.threads=2 > "$WORK/train.out" 2>&1 ||
  { cat "$WORK/train.out"; echo "safetensors: 0 passed, 1 failed"; exit 1; }
"$BUILD/bin/strata-export" "$WORK/run" > "$WORK/export.out" 2>&1 ||
  { cat "$WORK/export.out"; echo "safetensors: 0 passed, 1 failed"; exit 1; }
cat "$WORK/export.out"
"$VENV/bin/python" - "$WORK/run" <<'PY'
import json, sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file
run = sys.argv[1]
ours = load_file(f"{run}/model.safetensors")
theirs = torch.load(f"{run}/model.pt", weights_only=True)
assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
for k in theirs:
    assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
meta = safe_open(f"{run}/model.safetensors", "pt").metadata()
assert meta["strata_model"] == "cnn" and meta["format"] == "pt", meta
report = json.load(open(f"{run}/export.json"))
assert report["verified"] and len(report["tensors"]) == len(theirs), report
print(f"safetensors: {len(ours)} tensors equal to model.pt's (incl. {sum(v.dtype == torch.long for v in ours.values())} int64 BatchNorm counters), metadata {meta}")
PY
echo "safetensors: 1 passed, 0 failed"
