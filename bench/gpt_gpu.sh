#!/usr/bin/env bash
# GPT training throughput on one GPU: Strata vs PyTorch eager, same model
# (recipes/gpt2_small.yaml: 124M parameters, context 1024), batch, AdamW,
# clipping and autocast dtype, in one run. Prints a markdown table with
# tokens/s, MFU against the GPU's dense bf16 peak, and the ratio.
#
#   bench/gpt_gpu.sh [STEPS]     (after building into $BUILD, default build-cuda)
#
# MFU = tokens/s x (6 N + 12 L C T) / peak, with N the parameters outside
# the position embedding (PaLM, appendix B; nanoGPT's estimate). Peak:
# PEAK_TFLOPS, or 989.4 for an H100/H200 SXM (dense bf16).
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
BUILD=${BUILD:-build-cuda}
PY=${STRATA_PYTHON:-python3}
TEXT=${TEXT:-/usr/share/games/fortunes}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu" in
  *H100*|*H200*) PEAK=${PEAK_TFLOPS:-989.4} ;;
  *) PEAK=${PEAK_TFLOPS:?set PEAK_TFLOPS to the GPU dense bf16 peak} ;;
esac
L=12 C=768 T=1024 B=${BATCH:-16}

echo "GPU: $gpu (peak ${PEAK} TFLOP/s bf16); $STEPS steps, batch $B x $T tokens"
echo ""
echo "| precision | side | tokens/s | MFU | Strata / PyTorch |"
echo "| --- | --- | ---: | ---: | ---: |"
for prec in bf16 fp32; do
  rm -rf "$TMP/run"
  "$BUILD/bin/strata-train" recipes/gpt2_small.yaml "data.text=$TEXT" "run.dir=$TMP/run" \
    "train.precision=$prec" "train.max_steps=$STEPS" "data.batch_size=$B" run.log_every=10 \
    train.eval_every=1000000 data.test_subset=16 checkpoint.every_steps=1000000 \
    > "$TMP/strata_$prec.log" 2>&1 || { tail -20 "$TMP/strata_$prec.log"; continue; }
  n=$(grep -o 'model gpt with [0-9]* parameters' "$TMP/strata_$prec.log" | awk '{print $4}')
  flops=$(awk -v n="$n" -v l=$L -v c=$C -v t=$T 'BEGIN {print 6 * (n - t * c) + 12 * l * c * t}')
  # Train records after the first two (warm-up: allocator, cuDNN/cuBLAS choices).
  s=$(grep '"kind":"train"' "$TMP/run/metrics.jsonl" | tail -n +3 |
      sed 's/.*"tokens_per_s":\([0-9.e+]*\).*/\1/' | awk '{s+=$1; k++} END {printf "%.0f", s/k}')
  p=$("$PY" bench/pytorch_gpt.py --text "$TEXT" --batch "$B" --steps "$STEPS" --warmup 20 \
      --precision "$prec" 2>&1 | awk '/tokens_per_s/ {printf "%.0f", $2}')
  mfu() { awk -v r="$1" -v f="$flops" -v p="$PEAK" 'BEGIN {printf "%.1f%%", 100 * r * f / (p * 1e12)}'; }
  echo "| $prec | Strata | $s | $(mfu "$s") | $(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a / b}') |"
  echo "| $prec | PyTorch eager | $p | $(mfu "$p") | |"
done
echo ""
echo "Parameters: $n (Strata's count; PyTorch's is the same network); FLOPs/token $flops."
