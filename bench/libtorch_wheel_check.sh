#!/usr/bin/env bash
# Strata's CPU code built and run against a newer LibTorch without a GPU:
# the LibTorch inside PyPI's torch wheel (a CUDA build), used through its
# CPU library alone. Downloads the wheel (and the two small CUDA runtime
# libraries libtorch_cpu.so names as DT_NEEDED; nothing calls them),
# assembles a CPU-only CMake view of it, builds the edge-compression tests
# (int8 PTQ, QAT, pruning, TorchScript, ONNX) and the federated service
# tests, strata-train and strata-export,
# runs the tests, then trains a small cnn with QAT and structured pruning
# and exports it every int8 way and as ONNX. Prints a markdown report.
#
#   bench/libtorch_wheel_check.sh [TORCH_VERSION] [WORK_DIR]   (default 2.11.0; ~8 minutes)
#
# The wheel's LibTorch ships protobuf headers of its own; Strata reads its
# include directory through a view without them (cmake/StrataTorch.cmake),
# so ONNX export and the gRPC extension build against the system protobuf.
# The gloo backend needs gloo headers the wheel lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
VERSION=${1:-2.11.0}
WORK=${2:-$(mktemp -d)}
PY=/usr/bin/python3
T=$WORK/libtorch
B=$WORK/build
mkdir -p "$WORK/whl" "$T/lib" "$T/share/cmake/Torch"
say() { echo "$@"; }

if [ ! -f "$T/lib/libtorch_cpu.so" ]; then
  "$PY" -m pip download -q "torch==$VERSION" --no-deps -d "$WORK/whl" >&2
  wheel=$(ls "$WORK"/whl/torch-"$VERSION"-*.whl | head -1)
  cuda=$(unzip -p "$wheel" "torch-$VERSION.dist-info/METADATA" |
         sed -n 's/^Requires-Dist: cuda-toolkit\[.*\]==\([0-9.]*\).*/\1/p')
  "$PY" -m pip download -q "cuda-toolkit[cudart,cupti]==$cuda" -d "$WORK/whl/cuda" >&2
  unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/libc10.so' 'torch/lib/libtorch_cpu.so' \
    'torch/lib/libgomp.so.1' -d "$WORK/x"
  rm -rf "$T/include"
  mv "$WORK/x/torch/include" "$T/include"
  cp "$WORK"/x/torch/lib/*.so* "$T/lib/"
  for w in "$WORK"/whl/cuda/nvidia_cuda_runtime*.whl "$WORK"/whl/cuda/nvidia_cuda_cupti*.whl; do
    unzip -q -o "$w" -d "$WORK/cu"
  done
  find "$WORK/cu" \( -name 'libcudart.so.*' -o -name 'libcupti.so.*' \) -exec cp {} "$T/lib/" \;
  rm -rf "$WORK/x" "$WORK/cu"
  cat > "$T/share/cmake/Torch/TorchConfig.cmake" <<EOF
# A CPU-only view of the PyPI torch $VERSION wheel's LibTorch (bench/libtorch_wheel_check.sh).
get_filename_component(_p "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(Torch_VERSION $VERSION)
set(TORCH_INSTALL_PREFIX \${_p})
set(TORCH_INCLUDE_DIRS \${_p}/include \${_p}/include/torch/csrc/api/include)
set(TORCH_LIBRARIES \${_p}/lib/libtorch_cpu.so \${_p}/lib/libc10.so)
set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")
set(Torch_FOUND TRUE)
EOF
fi

say "# Strata against LibTorch $VERSION (PyPI wheel, CPU library only)"
say ""
say "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
say "- commit: $(git rev-parse --short HEAD)"
say ""
cmake -S "$SRC" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$T" \
  -DSTRATA_GLOO_INCLUDE_DIR=STRATA_GLOO_INCLUDE_DIR-NOTFOUND > "$WORK/configure.log" 2>&1 ||
  { tail -30 "$WORK/configure.log"; exit 1; }
grep "Strata:" "$WORK/configure.log" | sed 's/^-- /    /'
t0=$(date +%s)
TESTS="quantize_test qat_test prune_test torchscript_test onnx_export_test fed_codec_test fed_service_test"
# shellcheck disable=SC2086
ninja -C "$B" -j"$(nproc)" $TESTS strata-train strata-export > "$WORK/build.log" 2>&1 || { grep -B2 -A10 "error" "$WORK/build.log" | head -60; exit 1; }
say ""
say "build: $(( $(date +%s) - t0 )) s"
say ""
say '```'
export LD_LIBRARY_PATH=$T/lib
fail=0
for t in $TESTS; do
  line=$("$B/bin/$t" 2>&1 | grep -E "^\[  (PASSED|FAILED) " | tr '\n' ' ') || true
  say "$t: $line"
  [[ "$line" == *FAILED* || -z "$line" ]] && fail=1
done
R=$WORK/run
rm -rf "$R"
"$B/bin/strata-train" --version
"$B/bin/strata-train" recipes/fashion_mnist.yaml "run.dir=$R" train.max_steps=300 \
  train.qat.enabled=true train.qat.start_step=150 train.qat.freeze_bn_step=250 \
  train.qat.freeze_observer_step=270 train.prune.sparsity=0.5 train.prune.structure=channels \
  train.prune.scope=layer train.prune.every=50 2>&1 | tail -1
for q in static qat dynamic; do
  "$B/bin/strata-export" "$R" --format torchscript --quantize "$q" 2>&1 | grep -E "int8 cnn|error" || fail=1
done
"$B/bin/strata-export" "$R" --format strata-int8 2>&1 | tail -1
"$B/bin/strata-export" "$R" --format torchscript 2>&1 | grep -E "structured|error" || fail=1
"$B/bin/strata-export" "$R" --format onnx --quantize static 2>&1 | grep -E "ONNX opset|error" || fail=1
say '```'
exit $fail
