#!/usr/bin/env bash
# Every binary's command line: --help lists its real options and exits 0,
# --version names Strata, its commit, LibTorch and the backends, and every
# malformed argument exits 2 with one "PROGRAM: error: ..." line.
#   cli_test.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1
SRC=$2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=0
pass=0
check() {  # check NAME WANT_RC PATTERN -- COMMAND...
  local name=$1 want=$2 pattern=$3
  shift 4
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $want), output:"
    sed 's/^/    /' <<<"$out" | head -20
    fails=$((fails + 1))
  else
    pass=$((pass + 1))
  fi
}
R=$SRC/recipes/fed_fmnist_sync.yaml
for b in strata-train strata-fedserver strata-edge strata-fedsim; do
  check "$b --help" 0 "Usage: $b" -- "$BIN/$b" --help
  check "$b --version" 0 "^$b [0-9]+\.[0-9]+\.[0-9]+ \(git [0-9a-f]+|unknown\), LibTorch [0-9.]+ \((CPU|CUDA)\), backends:" -- "$BIN/$b" --version
  check "$b no arguments" 2 "^$b: error: no recipe given; e\.g\. $b " -- "$BIN/$b"
  check "$b unknown option" 2 "^$b: error: The following argument was not expected: --bogus \(see $b --help\)" -- "$BIN/$b" "$R" --bogus
  check "$b stray word" 2 "^$b: error: unexpected argument 'stray' after recipe" -- "$BIN/$b" "$R" stray
  check "$b bad override" 2 "^$b: error: command-line override 'federated.nope=1'" -- "$BIN/$b" "$R" federated.nope=1
  check "$b --print-schema" 0 "federated.server.max_uploads_per_client" -- "$BIN/$b" --print-schema
done
check "strata-train --help lists --consolidate" 0 "--consolidate CHECKPOINT_DIR OUT.pt" -- "$BIN/strata-train" --help
check "strata-train --consolidate one value" 2 "^strata-train: error: .*consolidate" -- "$BIN/strata-train" --consolidate only-one
check "strata-edge --help lists its options" 0 "--server HOST:PORT.*" -- "$BIN/strata-edge" --help
check "strata-edge --shard abc" 2 "^strata-edge: error: Could not convert: --shard = abc" -- "$BIN/strata-edge" "$R" --shard abc
check "strata-edge --shard out of range" 2 "^strata-edge: error: --shard 100 is outside \[0, 100\)" -- "$BIN/strata-edge" "$R" --server 127.0.0.1:1 --client a --token-file "$R" --shard 100
check "strata-edge missing --server" 2 "^strata-edge: error: --server, --client and --token-file are required" -- "$BIN/strata-edge" "$R"
check "strata-edge --token-file missing" 2 "^strata-edge: error: --token-file: File does not exist" -- "$BIN/strata-edge" "$R" --token-file /nonexistent
check "strata-edge infer --help" 0 "Usage: strata-edge infer .*MODEL" -- bash -c "'$BIN/strata-edge' infer --help | tr '\n' ' '"
check "strata-edge infer without inputs" 2 "^strata-edge infer: error: INPUT is required" -- "$BIN/strata-edge" infer /nonexistent
check "strata-edge infer missing model" 2 "^strata-edge infer: error: '/nonexistent' does not exist; pass a model strata-export wrote" -- "$BIN/strata-edge" infer /nonexistent "$R"
check "strata-edge --print-recipe" 0 "^federated:" -- "$BIN/strata-edge" "$R" --print-recipe
check "strata-fedserver --help lists subcommands" 0 "enroll .*rotate .*revoke .*clients .*status " -- bash -c "'$BIN/strata-fedserver' --help | tr '\n' ' '"
check "strata-fedserver enroll --help" 0 "--out DIR" -- "$BIN/strata-fedserver" enroll --help
check "strata-fedserver enroll without ids" 2 "^strata-fedserver: error: enroll: name at least one CLIENT_ID" -- "$BIN/strata-fedserver" enroll "$R"
check "strata-fedserver clients without list" 2 "^strata-fedserver: error: .*subcommand" -- "$BIN/strata-fedserver" clients "$R"
check "strata-fedserver enroll bad override" 2 "^strata-fedserver: error: command-line override 'run.nope=1'" -- "$BIN/strata-fedserver" enroll "$R" run.nope=1 edge-1
# Messages as a user meets them (issue #16's list): one separator each, the
# position, and a typo in the environment or a repeated key refused.
F=$SRC/recipes/fashion_mnist.yaml
for b in strata-train strata-fedsim; do
  check "$b STRATA_LOG_LEVEL typo" 2 "^$b: error: STRATA_LOG_LEVEL=verbose is not a log level; use debug, info, warn or error" -- env STRATA_LOG_LEVEL=verbose "$BIN/$b" "$R" --print-recipe
done
check "STRATA_LOG_ALL_RANKS typo" 2 "^strata-train: error: STRATA_LOG_ALL_RANKS=yes must be 1" -- env STRATA_LOG_ALL_RANKS=yes "$BIN/strata-train" "$F" --print-recipe
check "run.device=tpu: one colon" 2 "^strata-train: error: command-line override 'run.device=tpu': run.device = 'tpu' is not a device; use auto, cpu, cuda or cuda:N$" -- "$BIN/strata-train" "$F" run.device=tpu train.max_steps=1
check "unknown key: a full stop before the list" 2 "unknown key 'data.path'\. Valid keys under 'data': " -- "$BIN/strata-train" "$F" data.path=/x
DUP=$(mktemp --suffix=.yaml)
printf 'run:\n  name: x\n  seed: 1\n  name: y\n' > "$DUP"
check "duplicate YAML key" 2 "^strata-train: error: $DUP:4: duplicate key 'run.name' \(first at $DUP:2\); keep one of them$" -- "$BIN/strata-train" "$DUP" --print-recipe
printf 'run: {name: x}\nrun: {seed: 2}\n' > "$DUP"
check "duplicate YAML section" 2 "^strata-train: error: $DUP:2: duplicate key 'run' \(first at $DUP:1\)" -- "$BIN/strata-train" "$DUP" --print-recipe
rm -f "$DUP"
check "strata-export --help" 0 "Usage: strata-export" -- "$BIN/strata-export" --help
check "strata-export --version" 0 "^strata-export [0-9]+\.[0-9]+\.[0-9]+ " -- "$BIN/strata-export" --version
check "strata-export no run" 2 "^strata-export: error: RUN_DIR is required" -- "$BIN/strata-export"
check "strata-export missing run" 2 "^strata-export: error: '/nonexistent' does not exist; pass a run directory" -- "$BIN/strata-export" /nonexistent
check "strata-export run without model.pt" 2 "^strata-export: error: '$SRC/recipes' has no model.pt: it is not a finished run" -- "$BIN/strata-export" "$SRC/recipes"
check "strata-export unknown format" 2 "^strata-export: error: --format: tflite not in \{safetensors,torchscript,onnx,strata-int8\}" -- "$BIN/strata-export" "$SRC/recipes" --format tflite
check "strata-export --quantize needs torchscript" 2 "^strata-export: error: --quantize static writes TorchScript or ONNX; pass --format torchscript or onnx" -- "$BIN/strata-export" "$SRC/recipes" --quantize static
check "strata-export unknown --quantize" 2 "^strata-export: error: --quantize: int4 not in \{none,dynamic,static,qat\}" -- "$BIN/strata-export" "$SRC/recipes" --format torchscript --quantize int4
check "strata-train train.qat with activation checkpointing" 2 "^strata-train: error: .*train.qat with train.activation_checkpointing=full is not supported" -- "$BIN/strata-train" "$SRC/recipes/fashion_mnist.yaml" run.dir="$WORK/qat_ac" train.qat.enabled=true train.activation_checkpointing=full
check "strata-fedsim train.prune" 2 "^strata-fedsim: error: .*train.prune is not supported on federated clients yet" -- "$BIN/strata-fedsim" "$SRC/recipes/fed_fmnist_sync.yaml" train.prune.sparsity=0.5
echo "cli: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
