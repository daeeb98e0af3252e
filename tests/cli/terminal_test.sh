#!/usr/bin/env bash
# strata-train on an 80-column terminal (a tmux pane), recorded with
# `tmux capture-pane`: the progress line redraws in place, so the screen
# ends with exactly one of it -- the final state, kept -- fitted to 79
# columns;
# and piped, every log line starts with its UTC time.
#   terminal_test.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1
SRC=$2
WORK=$(mktemp -d)
SOCK=strata-terminal-test-$$
cleanup() { tmux -L "$SOCK" kill-server 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
pass=0
fails=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
RUN=("$BIN/strata-train" "$SRC/recipes/fashion_mnist.yaml" "run.dir=$WORK/run" model.name=mlp
     data.train_subset=4000 data.test_subset=2000 data.batch_size=32 train.max_steps=120
     run.log_every=50 train.eval_every=60 run.threads=2)
printf '%q ' "${RUN[@]}" > "$WORK/cmd"
# The pane waits until the test records it (pipe-pane: every byte written
# to the terminal, redraws included), runs the command, then signals the
# test (tmux wait-for: no polling).
tmux -L "$SOCK" -f /dev/null new-session -d -s t -x 80 -y 40 \
  "tmux -L $SOCK wait-for go; TERM=xterm-256color bash -c \"\$(cat $WORK/cmd)\"; echo EXIT=\$?; tmux -L $SOCK wait-for -S done; sleep 600"
tmux -L "$SOCK" pipe-pane -t t -o "cat > $WORK/stream"
tmux -L "$SOCK" wait-for -S go
if ! timeout 300 tmux -L "$SOCK" wait-for done; then
  bad "the run did not end within 300 s"
fi
tmux -L "$SOCK" capture-pane -p -t t > "$WORK/screen"
cat "$WORK/screen"
grep -q "^EXIT=0$" "$WORK/screen" && ok || bad "exit status"
n=$(grep -cE '^[0-9]+/120( |$)' "$WORK/screen")
[ "$n" -eq 1 ] && ok || bad "$n progress lines on the screen, want 1"
grep -qE '^120/120 \[#+\]  loss [0-9.]+  [0-9.]+k? samples/s  [0-9]+s<0s' "$WORK/screen" && ok ||
  bad "the final progress line (120/120, bar, loss, rate, elapsed<ETA) is not on the screen"
# A progress line that wrapped would leave its first row behind at every
# redraw (counted above); it also keeps the last column free.
width=$(grep -E '^120/120 ' "$WORK/screen" | awk '{print length($0)}')
[ "${width:-99}" -le 79 ] && ok || bad "the progress line is ${width:-?} columns, want <= 79"
# Numbers for people: five significant digits, not 0.6750866455078125.
grep -qE "eval step 60: test loss [0-9]\.[0-9]{1,5} accuracy 0\.[0-9]{1,5}$" "$WORK/screen" && ok || bad "the eval line"
grep -qE "^final test accuracy 0\.[0-9]{1,5} \(loss [0-9]\.[0-9]{1,5}\) after 120 steps" "$WORK/screen" && ok || bad "the final line"
# The recording: before the first logged step (50) the line already shows
# the loss and rate of the steps so far, and evaluation draws its own line.
tr '\r' '\n' < "$WORK/stream" | sed 's/\x1b\[K//g' > "$WORK/frames"
grep -qE '^([1-9]|[1-4][0-9])/120 .* loss [0-9]+\.[0-9]{4}  [0-9.]+k? samples/s' "$WORK/frames" && ok ||
  { head -c 2000 "$WORK/frames"; bad "no live loss and rate before the first logged step"; }
grep -qE '^evaluating test: [0-9]+/2000 samples' "$WORK/frames" && ok || bad "no evaluation progress line"
# Piped: plain lines with the time.
"$BIN/strata-train" "$SRC/recipes/fashion_mnist.yaml" run.dir="$WORK/piped" model.name=mlp \
  data.train_subset=512 data.test_subset=128 train.max_steps=4 run.log_every=2 run.threads=2 \
  > "$WORK/piped.out" 2>&1 || bad "the piped run"
grep -qE '^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z \[rank 0/1\] INFO step 2/4 epoch 0 loss [0-9.]+ lr ' "$WORK/piped.out" && ok ||
  { cat "$WORK/piped.out"; bad "piped log lines carry no timestamp"; }
echo "terminal: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
