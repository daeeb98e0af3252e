# Sourced by the shell tests that start a server in the background.
# wait_line FILE REGEX PID SECONDS: returns 0 once a line of FILE matches
# REGEX; 1 when process PID exits first or SECONDS pass. tail -F follows the
# file as it grows (inotify: woken by each write, no sleep-and-look loop),
# from its first line, and ends with PID.
wait_line() {
  timeout "$4" grep -qE -m1 -- "$2" <(tail -n +1 -F --pid="$3" "$1" 2>/dev/null)
}
