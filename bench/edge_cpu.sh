#!/usr/bin/env bash
# Every figure of bench/results/edge_cpu.md in one run (issue #17): the
# Fashion-MNIST cnn and mlp trained in fp32, then compressed every way
# Strata compresses a model for the edge, each measured by strata-export on
# the full test set (accuracy, file bytes, batch-1 / batch-64 latency on one
# thread), and the acceptance thresholds checked:
#   - post-training int8 against torch.ao and onnxruntime (bench/edge_int8.py,
#     oneDNN and QNNPACK);
#   - quantization-aware fine-tuning of the trained cnn (train.init, 1 epoch);
#   - magnitude pruning to 50 / 80 / 90% while fine-tuning (2 epochs), and
#     each pruned model in static int8;
#   - structured pruning of half of each layer's channels while fine-tuning
#     (2 epochs), exported as the smaller dense model, fp32 and int8;
#   - a student distilled from the cnn, alone and distilled, compressed.
#
#   bench/edge_cpu.sh [WORK_DIR]   (after launch/build; about 25 minutes on 2 cores)
#
# WORK_DIR keeps the runs (a second call reuses the finished ones); default a
# fresh temporary directory. onnxruntime comes from PyPI into WORK_DIR/venv;
# without PyPI the onnxruntime rows are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
BIN=build/bin
PY=/usr/bin/python3
say() { echo "== $*" >&2; }

# train NAME RECIPE [overrides...]: a finished run in WORK/NAME (kept if there).
train() {
  local name=$1 recipe=$2
  shift 2
  if [ ! -f "$WORK/$name/model.pt" ]; then
    say "train $name"
    rm -rf "${WORK:?}/$name"
    "$BIN/strata-train" "$recipe" "run.dir=$WORK/$name" "$@" > "$WORK/$name.log" 2>&1 ||
      { tail -20 "$WORK/$name.log"; exit 1; }
  fi
}
# export NAME TAG [strata-export flags...]: WORK/NAME exported, its report as WORK/NAME.TAG.json.
export_run() {
  local name=$1 tag=$2
  shift 2
  say "export $name ($tag)"
  "$BIN/strata-export" "$WORK/$name" --out "$WORK/$name.$tag.file" "$@" \
    > "$WORK/$name.$tag.log" 2>&1 || { tail -20 "$WORK/$name.$tag.log"; exit 1; }
  cp "$WORK/$name/export.json" "$WORK/$name.$tag.json"
}

# --- fp32 models ---------------------------------------------------------
train cnn recipes/fashion_mnist.yaml
train mlp recipes/fashion_mnist_mlp.yaml

# --- post-training int8 against torch.ao and onnxruntime ----------------
if ( . tests/integration/pypi_venv.sh && pypi_venv "$WORK/venv" onnxruntime onnxruntime ) >&2; then
  PY=$WORK/venv/bin/python
fi
for engine in onednn qnnpack; do
  say "PTQ against torch.ao, $engine"
  "$PY" bench/edge_int8.py build "$WORK/cnn" "$WORK/mlp" --engine "$engine" > "$WORK/ptq_$engine.md"
done

# --- the distilled student ----------------------------------------------
TEACHER="distill.teacher=$WORK/cnn/model.pt distill.teacher_model.name=cnn"
TEACHER="$TEACHER distill.teacher_model.channels=[32,64] distill.teacher_model.fc=128"
TEACHER="$TEACHER distill.teacher_model.dropout=0"
train student_alone recipes/fmnist_student_distill.yaml "distill.teacher=''"
train student recipes/fmnist_student_distill.yaml $TEACHER

# compress NAME RECIPE [overrides of every fine-tune...]: the run WORK/NAME
# quantized (dynamic, static per channel and per tensor), QAT-fine-tuned
# (1 epoch) and pruned while fine-tuning (2 epochs, 50 / 80 / 90%), each
# exported and measured.
compress() {
  local name=$1 recipe=$2
  shift 2
  local ft=("train.init=$WORK/$name/model.pt" schedule.warmup_steps=0 "$@")
  export_run "$name" fp32 --format torchscript
  export_run "$name" static --format torchscript --quantize static
  export_run "$name" static_pt --format torchscript --quantize static --per-tensor
  export_run "$name" dynamic --format torchscript --quantize dynamic
  train "${name}_qat" "$recipe" "${ft[@]}" train.epochs=1 optimizer.lr=0.001 \
    train.qat.enabled=true train.qat.freeze_bn_step=300 train.qat.freeze_observer_step=350
  export_run "${name}_qat" qat --format torchscript --quantize qat
  for s in 50 80 90; do
    train "${name}_p$s" "$recipe" "${ft[@]}" train.epochs=2 optimizer.lr=0.01 \
      train.prune.end_step=600 train.prune.every=50 "train.prune.sparsity=0.$s"
    export_run "${name}_p$s" fp32 --format torchscript
    export_run "${name}_p$s" int8 --format torchscript --quantize static
  done
}
compress cnn recipes/fashion_mnist.yaml
compress mlp recipes/fashion_mnist_mlp.yaml
compress student recipes/fmnist_student_distill.yaml $TEACHER

# --- structured pruning: half of each layer's channels --------------------
train cnn_c50 recipes/fashion_mnist.yaml "train.init=$WORK/cnn/model.pt" schedule.warmup_steps=0 \
  train.epochs=2 optimizer.lr=0.01 train.prune.end_step=600 train.prune.every=50 \
  train.prune.sparsity=0.5 train.prune.structure=channels train.prune.scope=layer
export_run cnn_c50 fp32 --format torchscript
export_run cnn_c50 int8 --format torchscript --quantize static

# --- the summary ----------------------------------------------------------
"$PY" - "$WORK" <<'EOF'
import json, os, sys

work = sys.argv[1]
def report(name, tag):
    with open(os.path.join(work, f"{name}.{tag}.json")) as f:
        return json.load(f)
def summary_accuracy(name):
    acc = None
    with open(os.path.join(work, name, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "summary":
                acc = r["accuracy"]
    return acc

models = ("cnn", "mlp", "student")
base = {m: report(m, "fp32")["accuracy_torchscript"] for m in models}
base_bytes = {m: report(m, "fp32")["file_bytes"] for m in models}
rows, checks = [], []

def row(model, variant, acc, nbytes, b1=None, b64=None):
    rows.append((model, variant, acc, (acc - base[model]) * 100, nbytes, base_bytes[model] / nbytes, b1, b64))

def int8(model, run, tag, variant):
    r = report(run, tag)
    lat = r["latency"]
    row(model, variant, r["accuracy_int8"], r["file_bytes"], lat["batch_1"]["int8_ms"],
        lat["batch_64"]["int8_ms"])
    return r

for m in models:
    lat = report(m, "static")["latency"]
    row(m, "fp32", base[m], base_bytes[m], lat["batch_1"]["fp32_ms"], lat["batch_64"]["fp32_ms"])
    pc = int8(m, m, "static", "static int8 per channel")
    int8(m, m, "static_pt", "static int8 per tensor")
    dyn = int8(m, m, "dynamic", "dynamic int8")
    qat = int8(m, f"{m}_qat", "qat", "QAT fine-tune (1 epoch), int8")
    if m == "cnn":
        checks.append(("cnn static per-channel PTQ within 1.0 point of fp32",
                       abs(pc["accuracy_int8"] - base[m]) * 100 <= 1.0))
        checks.append(("cnn static per-channel PTQ >= 3.5x smaller", base_bytes[m] / pc["file_bytes"] >= 3.5))
        checks.append(("cnn QAT within 0.3 points", abs(qat["accuracy_int8"] - base[m]) * 100 <= 0.3))
    if m == "mlp":
        checks.append(("mlp dynamic int8 within 0.5 points", abs(dyn["accuracy_int8"] - base[m]) * 100 <= 0.5))
    for s, limit in ((50, 0.3), (80, 1.0), (90, 2.0)):
        r = report(f"{m}_p{s}", "fp32")
        acc = r["accuracy_torchscript"]
        row(m, f"magnitude pruning {s}% (fine-tune 2 epochs)", acc, r["file_bytes"])
        if m == "cnn":
            checks.append((f"cnn {s}% magnitude pruning within {limit} points", (base[m] - acc) * 100 <= limit))
        int8(m, f"{m}_p{s}", "int8", f"magnitude pruning {s}%, static int8")
    if m == "cnn":
        c = report("cnn_c50", "fp32")
        row("cnn", "channels pruned 50% (fine-tune 2 epochs), smaller dense", c["accuracy_torchscript"],
            c["file_bytes"], c["latency"]["batch_1"]["pruned_ms"], c["latency"]["batch_64"]["pruned_ms"])
        int8("cnn", "cnn_c50", "int8", "channels pruned 50%, static int8")
        checks.append(("structured 50% reports its dense size and latency reduction",
                       c["file_bytes"] < c["file_bytes_unpruned"] and "pruned_ms" in c["latency"]["batch_1"]))
pc = report("cnn", "static")

print(f"engine {pc['engine']}, {pc['latency_threads']} thread(s), Fashion-MNIST test set "
      f"({pc['eval_predictions']} images); Δ against the fp32 model of the same row's model\n")
print("| model | variant | accuracy | Δ (points) | file bytes | × smaller | batch-1 ms | batch-64 ms |")
print("|---|---|---|---|---|---|---|---|")
fmt = lambda v: "" if v is None else f"{v:.3f}"
for model, variant, acc, delta, nbytes, ratio, b1, b64 in rows:
    print(f"| {model} | {variant} | {acc:.4f} | {delta:+.2f} | {nbytes} | {ratio:.2f} | {fmt(b1)} | {fmt(b64)} |")
print(f"\nstructured 50%: dense file {c['file_bytes']} bytes against {c['file_bytes_unpruned']} "
      f"({c['file_bytes_unpruned'] / c['file_bytes']:.2f}x smaller); batch-1 "
      f"{c['latency']['batch_1']['pruned_ms']:.3f} ms against {c['latency']['batch_1']['unpruned_ms']:.3f} "
      f"({c['latency']['batch_1']['unpruned_ms'] / c['latency']['batch_1']['pruned_ms']:.2f}x faster), batch-64 "
      f"{c['latency']['batch_64']['pruned_ms']:.3f} ms against {c['latency']['batch_64']['unpruned_ms']:.3f} "
      f"({c['latency']['batch_64']['unpruned_ms'] / c['latency']['batch_64']['pruned_ms']:.2f}x)")
for l in c["pruned_channels"]:
    print(f"  {l['layer']}: {l['kept']} of {l['channels']} channels kept")

d = report("student", "static")["distillation"]["models"]
print("\ndistill -> compress (the student of recipes/fmnist_student_distill.yaml, teacher the fp32 cnn):\n")
print("| model | accuracy | parameters | file bytes |")
print("|---|---|---|---|")
print(f"| student trained alone (same recipe, no teacher) | {summary_accuracy('student_alone'):.4f} | | |")
for r in d:
    print(f"| {r['model']} ({r['spec']}) | {r['accuracy']:.4f} | {r['parameters']} | {r['file_bytes']} |")

print("\nacceptance:")
for what, ok in checks:
    print(f"  {'PASS' if ok else 'FAIL'} {what}")
EOF
for engine in onednn qnnpack; do
  echo ""
  echo "## PTQ side by side, $engine (bench/edge_int8.py)"
  echo ""
  cat "$WORK/ptq_$engine.md"
done
