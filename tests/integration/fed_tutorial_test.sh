#!/usr/bin/env bash
# Runs README.md's two-terminal federated tutorial exactly as written, in a
# scratch directory that holds links to build/ and recipes/: the blocks
# after <!-- tutorial:NAME --> markers, plaintext and then TLS. A server
# block's last command is terminal 1's long-running server (started in the
# background; the edge block starts once it listens). Then the TLS
# mismatches in both directions must say what to do.
#   fed_tutorial_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ln -s "$BUILD" "$WORK/build"
ln -s "$SRC/recipes" "$WORK/recipes"
cd "$WORK"
pass=0
fail() { echo "FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }
# shellcheck source=tests/integration/wait_line.sh
source "$SRC/tests/integration/wait_line.sh"

block() {  # the commands of README block NAME
  awk -v m="<!-- tutorial:$1 -->" '
    $0 == m { want = 1; next }
    want && /^```sh/ { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }' "$SRC/README.md"
}

run_tutorial() {  # run_tutorial SERVER_BLOCK EDGES_BLOCK
  local server edges
  server=$(block "$1")
  edges=$(block "$2")
  [ -n "$server" ] && [ -n "$edges" ] || fail "README has no blocks $1/$2"
  # Terminal 1: everything but the last line, then the server.
  bash -euo pipefail -c "$(sed '$d' <<<"$server")" > "t1-$1.out" 2>&1 || { cat "t1-$1.out"; fail "$1 setup"; }
  bash -c "exec $(tail -n 1 <<<"$server")" > "server-$1.log" 2>&1 &
  SERVER_PID=$!
  wait_line "server-$1.log" "^listening on" "$SERVER_PID" 60 ||
    { cat "server-$1.log"; fail "$1: the server did not listen within 60 s"; }
  # Terminal 2.
  timeout 300 bash -euo pipefail -c "$edges" > "t2-$2.out" 2>&1 || { cat "t2-$2.out"; fail "$2"; }
  timeout 60 tail --pid="$SERVER_PID" -f /dev/null || fail "$1: the server did not finish"
  wait "$SERVER_PID" || { cat "server-$1.log"; fail "$1: the server exited non-zero"; }
  SERVER_PID=
  local checks=(
    "server-$1.log:round 1 of 3: "                      # the progress line
    "server-$1.log:version 4 \(round 3\): 2 update\(s\)"  # 3 rounds of both clients
    "t2-$2.out:^server .*:7070$"                         # status
    "t2-$2.out:^version 1$"
    "t2-$2.out:^enrolled 2$"
    "t2-$2.out:^polls_open [0-9]+$"                    # the operator sees the calls
    "t2-$2.out:edge-0: round 1, base version 1: trained on 3000 samples"
    "t2-$2.out:edge-1: round 3, base version 3: trained on 3000 samples"
    "t2-$2.out:^edge-0: 3 updates accepted, 0 refused"
    "t2-$2.out:^edge-1: 3 updates accepted, 0 refused"
  )
  for c in "${checks[@]}"; do
    grep -qE -- "${c#*:}" "${c%%:*}" || { cat "${c%%:*}"; fail "$1/$2: no '${c#*:}' in ${c%%:*}"; }
    pass=$((pass + 1))
  done
  [ "$(stat -c %a runs/fed_two_terminals/tokens/edge-0.token)" = 600 ] || fail "token file mode"
  pass=$((pass + 1))
}

run_tutorial plain-server plain-edges
bash -euo pipefail -c "$(block tls-setup)" > tls-setup.out 2>&1 || { cat tls-setup.out; fail "tls-setup"; }
run_tutorial tls-server tls-edges

# A plaintext client against the TLS server, and a TLS client against a
# plaintext one: each error says what to change.
R=recipes/fed_two_terminals.yaml
E=(build/bin/strata-edge "$R" federated.client.max_retries=0 --client edge-0
   --token-file runs/fed_two_terminals/tokens/edge-0.token)
mismatch() {  # mismatch SERVER_OVERRIDES EDGE_OVERRIDES EXPECTED
  rm -rf runs/fed_two_terminals
  build/bin/strata-fedserver enroll "$R" edge-0 --out runs/fed_two_terminals/tokens > /dev/null
  # shellcheck disable=SC2086
  build/bin/strata-fedserver "$R" $1 > mismatch-server.log 2>&1 &
  SERVER_PID=$!
  wait_line mismatch-server.log "^listening on" "$SERVER_PID" 60 ||
    { cat mismatch-server.log; fail "mismatch: the server did not listen within 60 s"; }
  local out rc=0
  # shellcheck disable=SC2086
  out=$(timeout 120 "${E[@]}" $2 2>&1) || rc=$?
  kill "$SERVER_PID"; wait "$SERVER_PID" || true
  SERVER_PID=
  [ "$rc" -eq 1 ] || { echo "$out"; fail "mismatch exit $rc"; }
  grep -qF -- "$3" <<<"$out" || { echo "$out"; fail "no '$3'"; }
  pass=$((pass + 1))
}
TLS="federated.server.tls_cert=runs/tls/server.pem federated.server.tls_key=runs/tls/server.key"
mismatch "$TLS" "--server localhost:7070" "the server requires TLS: pass federated.server.tls_ca"
mismatch "" "federated.server.tls_ca=runs/tls/ca.pem --server localhost:7070" \
  "the client speaks TLS: if the server is plaintext (loopback without tls_cert), remove tls_ca"
echo "fed_tutorial: $pass passed, 0 failed"
