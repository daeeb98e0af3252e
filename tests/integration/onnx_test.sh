#!/usr/bin/env bash
# strata-export --format onnx run by onnxruntime (from PyPI, in a venv this
# script makes under the build directory; exit 77, ctest's skip, when PyPI
# cannot be reached): tests/integration/onnx_test.py.
#   onnx_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
VENV=$BUILD/onnxruntime-venv
# shellcheck source=tests/integration/pypi_venv.sh
source "$SRC/tests/integration/pypi_venv.sh"
pypi_venv "$VENV" "onnxruntime" onnxruntime
exec "$VENV/bin/python" "$SRC/tests/integration/onnx_test.py" "$BUILD/bin" "$SRC"
