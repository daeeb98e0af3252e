#!/usr/bin/env bash
# Builds the libFuzzer targets (clang with ASan and UBSan, into build-fuzz/
# or $STRATA_FUZZ_BUILD) and runs each for SECONDS from its committed corpus
# fuzz/corpus/<target> (read only: new inputs go to a scratch directory).
# Fails on any crash, leak, timeout or out-of-memory; prints each target's
# executions.
#   fuzz/run.sh SECONDS [TARGET...]
#   MERGE=1 fuzz/run.sh SECONDS TARGET   also merges what the run found into
#                                        the committed corpus (minimized)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(update_receiver_fuzz recipe_fuzz idx_fuzz checkpoint_meta_fuzz)
BUILD=${STRATA_FUZZ_BUILD:-build-fuzz}
LAUNCHER=()
command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S fuzz -B "$BUILD" "${GEN[@]}" "${LAUNCHER[@]}" -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j "${STRATA_JOBS:-$(nproc)}" --target "${TARGETS[@]}"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
failed=0
passed=0
for t in "${TARGETS[@]}"; do
  name=${t%_fuzz}
  corpus=fuzz/corpus/$name
  mkdir -p "$SCRATCH/$name" "$SCRATCH/$name-artifacts"
  log=$SCRATCH/$name.log
  if "$BUILD/$t" "$SCRATCH/$name" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$SCRATCH/$name-artifacts/" > "$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    echo "$t: ${execs:-?} executions in ${SECONDS_EACH} s, no crash, leak or timeout"
    passed=$((passed + 1))
    if [ "${MERGE:-0}" = 1 ]; then
      mkdir -p "$SCRATCH/$name-merged"
      "$BUILD/$t" -merge=1 "$SCRATCH/$name-merged" "$corpus" "$SCRATCH/$name" > /dev/null 2>&1
      rm -rf "$corpus" && mkdir -p "$corpus" && cp "$SCRATCH/$name-merged"/* "$corpus"/
      echo "$t: corpus now $(ls "$corpus" | wc -l) inputs"
    fi
  else
    echo "$t: FAILED"
    tail -40 "$log"
    for a in "$SCRATCH/$name-artifacts"/*; do
      [ -f "$a" ] && { echo "input ($a):"; od -c "$a" | head -20; }
    done
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
