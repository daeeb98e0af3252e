#!/usr/bin/env bash
# The GPU session's checks in one command: build Strata against the CUDA
# LibTorch inside the machine's Python torch, run the `gpu` tests (nccl at
# world size 1, the reducer on CUDA, strata-train on cuda), train the
# Fashion-MNIST CNN recipe on the GPU, and compare CNN training samples/s with
# PyTorch eager on the same GPU, model, batch and optimizer. Writes a
# markdown report.
#
#   bench/gpu_check.sh REPORT.md [STEPS]
#
# Environment: EXTRA_PREFIX (prefixes searched besides LibTorch's, e.g. where
# yaml-cpp and GoogleTest live), CMAKE_ARGS (more configure arguments), DATA
# (the Fashion-MNIST directory), BUILD (build-cuda), PARTS (default
# "tests cnn cnnbench gpt int8": which parts run after the build; gpt is
# bench/gpt_gpu.sh; int8 runs the edge-compression unit tests -- int8 PTQ,
# QAT, pruning, TorchScript -- on the CPU of this newer LibTorch, whose legacy
# quantized:: ops issue #17 has to know about). Logs: $BUILD/logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:?usage: bench/gpu_check.sh REPORT.md [STEPS]}
STEPS=${2:-600}
BUILD=${BUILD:-build-cuda}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
PY=${STRATA_PYTHON:-python3}
TORCH_PREFIX=$("$PY" -c 'import torch;print(torch.utils.cmake_prefix_path)')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
LOGS=$BUILD/logs
mkdir -p "$LOGS"
say() { echo "$@" | tee -a "$REPORT"; }

: > "$REPORT"
say "# GPU check"
say ""
say "- machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null), $(nproc) CPU cores"
say "- LibTorch: $("$PY" -c 'import torch;print(torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())')"
say "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say ""

t0=$(date +%s)
# shellcheck disable=SC2086
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX${EXTRA_PREFIX:+;$EXTRA_PREFIX}" ${CMAKE_ARGS:-} \
  > "$LOGS/configure.log" 2>&1 || { tail -40 "$LOGS/configure.log"; say "configure FAILED"; exit 1; }
grep "Strata:" "$LOGS/configure.log"
ninja -C "$BUILD" strata-train cuda_test \
  > "$LOGS/build.log" 2>&1 || { grep -B2 -A12 "error" "$LOGS/build.log" | head -80; say "build FAILED"; exit 1; }
say "- build (configure + strata-train + tests): $(( $(date +%s) - t0 )) s"
say ""

PARTS=" ${PARTS:-tests cnn cnnbench gpt int8} "
part() { [[ "$PARTS" == *" $1 "* ]]; }

if part tests; then
say "## gpu tests (ctest -L gpu)"
say '```'
(cd "$BUILD" && ctest -L gpu --output-on-failure 2>&1) > "$LOGS/ctest.log"
grep -E "Test +#|tests passed|tests failed|Failed|Skipped" "$LOGS/ctest.log" | tee -a "$REPORT"
say '```'
grep -q "100% tests passed" "$LOGS/ctest.log" || sed -n '1,200p' "$LOGS/ctest.log"
fi

if part cnn; then
say ""
say "## Fashion-MNIST CNN recipe on the GPU, by train.precision"
say ""
say "| precision | test accuracy | test loss | wall s |"
say "| --- | ---: | ---: | ---: |"
for prec in fp32 bf16 fp16; do
  rm -rf "$TMP/run"
  t1=$(date +%s)
  "$BUILD/bin/strata-train" recipes/fashion_mnist.yaml run.device=cuda "data.root=$DATA" \
    "train.precision=$prec" "run.dir=$TMP/run" > "$LOGS/train_$prec.log" 2>&1 ||
    { tail -30 "$LOGS/train_$prec.log"; say "| $prec | FAILED | | |"; continue; }
  wall=$(( $(date +%s) - t1 ))
  final=$(tail -1 "$TMP/run/metrics.jsonl")
  acc=$(echo "$final" | sed 's/.*"accuracy":\([0-9.e+-]*\).*/\1/')
  loss=$(echo "$final" | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
  say "| $prec | $acc | $loss | $wall |"
done
say ""
say "Run: \`strata-train recipes/fashion_mnist.yaml run.device=cuda train.precision=P\`; $(grep -o 'model .* threads per rank' "$LOGS/train_fp32.log" | head -1)"
grep -h "skipped" "$LOGS"/train_fp16.log | tail -3 | tee -a "$REPORT"
fi
if part cnnbench; then
say ""
say "## CNN training samples/s on the GPU: Strata vs PyTorch eager"
say ""
say "Same CNN, batch, SGD (Nesterov, weight decay), fp32; $STEPS steps, the first 50 (PyTorch) / first log window (Strata) not timed; batches copied from host memory each step on both sides."
say ""
say "| batch | Strata samples/s | PyTorch samples/s | Strata / PyTorch |"
say "| ---: | ---: | ---: | ---: |"
for batch in 64 256 1024; do
  rm -rf "$TMP/b"
  "$BUILD/bin/strata-train" recipes/fashion_mnist.yaml run.device=cuda "data.root=$DATA" \
    "run.dir=$TMP/b" "data.batch_size=$batch" "train.max_steps=$STEPS" run.log_every=50 \
    data.augment.hflip=false train.eval_every=100000 run.threads=4 > "$LOGS/b$batch.log" 2>&1
  s=$(grep '"kind":"train"' "$TMP/b/metrics.jsonl" | tail -n +2 |
      sed 's/.*"samples_per_s":\([0-9.e+]*\).*/\1/' | awk '{s+=$1; n++} END {printf "%.0f", s/n}')
  p=$("$PY" bench/pytorch_ddp.py --device cuda --root "$DATA" --batch "$batch" \
      --steps "$STEPS" --threads 4 | awk '{printf "%.0f", $2}')
  say "| $batch | $s | $p | $(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a / b}') |"
done
fi

if part gpt; then
  say ""
  say "## GPT (124M) training tokens/s and MFU: Strata vs PyTorch eager"
  say ""
  BUILD=$BUILD bench/gpt_gpu.sh 60 2>&1 | tee -a "$REPORT"
fi

if part int8; then
  say ""
  say "## int8, QAT and pruning on this LibTorch (CPU; issue #17)"
  say ""
  say '```'
  if ninja -C "$BUILD" quantize_test qat_test prune_test torchscript_test > "$LOGS/build_int8.log" 2>&1; then
    (cd "$BUILD" && ctest -R "Quantiz|Qat|Prune|TorchScript" --output-on-failure 2>&1) > "$LOGS/ctest_int8.log"
    grep -E "tests passed|tests failed|\*\*\*Failed|Not Run" "$LOGS/ctest_int8.log" | tee -a "$REPORT"
    grep -E "^(unknown|Unknown|.*Could not find|.*not registered).*" "$LOGS/ctest_int8.log" | sort -u | head -5 | tee -a "$REPORT"
  else
    grep -B2 -A8 "error" "$LOGS/build_int8.log" | head -40 | tee -a "$REPORT"
    say "int8 build FAILED"
  fi
  say '```'
fi
