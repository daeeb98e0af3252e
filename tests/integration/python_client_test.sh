#!/usr/bin/env bash
# The Python client of examples/python_client against a real strata-fedserver:
# stubs generated from federated/proto/strata_fed.proto now (grpcio-tools in
# a venv this script makes under the build directory), a fetch, one NumPy
# SGD step, a submit, a refused replay and the operator's status call.
# Exits 77 (ctest: skipped) when PyPI cannot be reached.
#   python_client_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
VENV=$BUILD/python-venv
# shellcheck source=tests/integration/pypi_venv.sh
source "$SRC/tests/integration/pypi_venv.sh"
pypi_venv "$VENV" "grpc, grpc_tools" grpcio grpcio-tools
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/stubs"
"$VENV/bin/python" -m grpc_tools.protoc -I "$SRC/federated/proto" --python_out="$WORK/stubs" \
  --grpc_python_out="$WORK/stubs" "$SRC/federated/proto/strata_fed.proto"
PORT=$("$VENV/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
R=$SRC/recipes/fed_two_terminals.yaml
O=(run.dir="$WORK/run" federated.mode=async federated.server.address=127.0.0.1:$PORT)
"$BUILD/bin/strata-fedserver" enroll "$R" "${O[@]}" py-1 --out "$WORK/tokens" > /dev/null
"$BUILD/bin/strata-fedserver" "$R" "${O[@]}" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
# shellcheck source=tests/integration/wait_line.sh
source "$SRC/tests/integration/wait_line.sh"
wait_line "$WORK/server.log" "^listening on" "$SERVER_PID" 60 ||
  { cat "$WORK/server.log"; echo "python_client: 0 passed, 1 failed"; exit 1; }
if ! "$VENV/bin/python" "$SRC/examples/python_client/fed_client.py" --server "127.0.0.1:$PORT" \
    --client py-1 --token-file "$WORK/tokens/py-1.token" --stubs "$WORK/stubs" \
    --operator-token-file "$WORK/run/operator.token" > "$WORK/client.out" 2>&1; then
  cat "$WORK/client.out" "$WORK/server.log"
  echo "python_client: 0 passed, 1 failed"
  exit 1
fi
cat "$WORK/client.out"
for want in "fetched version 1 of model mlp: 6 tensors" "loss .* -> " "submitted: update 1" \
            "replay refused: ALREADY_EXISTS" "status: version 1, 1 accepted, 1 refused"; do
  grep -qE -- "$want" "$WORK/client.out" || { echo "no '$want'"; echo "python_client: 0 passed, 1 failed"; exit 1; }
done
echo "python_client: 1 passed, 0 failed"
