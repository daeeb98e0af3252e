#!/usr/bin/env bash
# Strata's TensorBoard event files read back by TensorBoard's own reader
# (the tensorboard package from PyPI, in a venv this script makes under the
# build directory; exit 77, ctest's skip, when PyPI cannot be reached):
# a strata-train run and a strata-fedsim run with metrics.tensorboard=true;
# every scalar's tags, steps and values must be metrics.jsonl's.
#   tensorboard_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
VENV=$BUILD/tensorboard-venv
# shellcheck source=tests/integration/pypi_venv.sh
source "$SRC/tests/integration/pypi_venv.sh"
pypi_venv "$VENV" "tensorboard" tensorboard
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BUILD/bin/strata-train" "$SRC/recipes/fashion_mnist.yaml" run.dir="$WORK/train" \
  model.name=mlp data.train_subset=2000 data.test_subset=500 train.max_steps=30 \
  run.log_every=5 train.eval_every=10 run.threads=2 metrics.tensorboard=true > "$WORK/train.out" 2>&1 ||
  { cat "$WORK/train.out"; echo "tensorboard: 0 passed, 1 failed"; exit 1; }
"$BUILD/bin/strata-fedsim" "$SRC/recipes/fed_fmnist_sync.yaml" run.dir="$WORK/fed" \
  data.train_subset=2000 data.test_subset=500 federated.sim.clients=4 federated.sim.partition=iid \
  federated.sync.rounds=3 federated.sync.clients_per_round=4 federated.sync.over_selection=0 \
  federated.sync.local_epochs=1 run.threads=2 metrics.tensorboard=true > "$WORK/fed.out" 2>&1 ||
  { cat "$WORK/fed.out"; echo "tensorboard: 0 passed, 1 failed"; exit 1; }
"$VENV/bin/python" - "$WORK/train" "$WORK/fed" <<'PY'
import glob, json, math, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

def check(run, kinds, must):
    files = glob.glob(run + "/events.out.tfevents.*")
    assert len(files) == 1, files
    ea = EventAccumulator(run, size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    missing = set(must) - tags
    assert not missing, f"{run}: no {sorted(missing)} in {sorted(tags)}"
    want = {}
    for line in open(run + "/metrics.jsonl"):
        r = json.loads(line)
        if r["kind"] not in kinds:
            continue
        for k, v in r.items():
            if k in ("kind", "step", "epoch", "version", "round", "time_s") or isinstance(v, (str, bool)) or v is None:
                continue
            want.setdefault(f"{r['kind']}/{k}", []).append((r["step"], v))
    assert set(want) == tags, (sorted(want), sorted(tags))
    n = 0
    for tag, points in want.items():
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], (tag, got, points)
        for (_, a), (_, b) in zip(got, points):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30), (tag, a, b)  # float32
            n += 1
    print(f"{run.rsplit('/', 1)[-1]}: {len(tags)} tags, {n} scalars match metrics.jsonl "
          f"({', '.join(sorted(tags)[:4])}, ...)")

check(sys.argv[1], ("train", "eval"), ["train/loss", "train/lr", "train/samples_per_s", "eval/loss", "eval/accuracy"])
check(sys.argv[2], ("version",), ["version/accuracy", "version/loss", "version/updates"])
PY
echo "tensorboard: 2 passed, 0 failed"
