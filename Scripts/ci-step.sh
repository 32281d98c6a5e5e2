#!/usr/bin/env bash
# Runs one CI step with a time limit, its output kept in a log, and prints a
# short account: CI keeps only the first part of what a run prints, so a run
# that prints every test line hides its own ending.
#
#   Scripts/ci-step.sh NAME SECONDS COMMAND [ARG...]
#
# The command runs in a session of its own with standard input from
# /dev/null; everything it prints goes to $CI_LOG_DIR/NAME.log (default
# .build-ci/logs). When it ends, the step prints its duration and the log's
# summary lines (failures, skips, "Test run", errors). It fails when:
#   - the command fails (the log's last lines are printed);
#   - the time limit passes: the step prints which tests had started and not
#     ended, the process tree and every process's thread stacks (gdb), then
#     kills the session;
#   - a process the command started is still alive, or still holds the log,
#     after the command has ended (an orphan like that keeps CI's output open
#     and the run never ends): the step names and kills it.
set -uo pipefail

[ $# -ge 3 ] || { sed -n 2,17p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
NAME="$1"; LIMIT="$2"; shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_DIR="${CI_LOG_DIR:-$ROOT/.build-ci/logs}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/$NAME.log"
: > "$LOG"

# What a log says about itself: summary lines only, a bounded number.
summary() {
  grep -a -E '✘|[Ff]ailed|FAILED|skipped|Test run with|Executed [0-9]+ tests|error:|warning:|^fuzz: .*(done|crash|leak|timeout|oom)|Error:' "$1" \
    | grep -a -v -E '^\s*$' | tail -n "${2:-40}"
}

# Tests that printed "started" and never "passed"/"failed"/"skipped".
unfinished_tests() {
  awk '
    /Test case passing/ || /Test run (started|with)/ { next }
    /◇ Test .* started\./ { s=$0; sub(/^.*◇ Test /, "", s); sub(/ started\.$/, "", s); open[s]=1 }
    /[✔✘↷] Test / { s=$0; sub(/^.*[✔✘↷] Test /, "", s)
      if (!sub(/( with [0-9]+ test cases?)? (passed|failed) after [0-9.]+ seconds.*$/, "", s)) sub(/ skipped(:.*|\.)$/, "", s)
      delete open[s] }
    END { for (s in open) print "  still running: " s }
  ' "$1"
}

# Every process whose session is $1 (the step's own session id).
session_pids() {
  ps -eo pid=,sid= | awk -v sid="$1" '$2 == sid { print $1 }'
}

# Every process holding $LOG open (orphans that outlived the command).
log_holders() {
  local fd pid
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "$LOG" ] || continue
    pid="${fd#/proc/}"; pid="${pid%%/*}"
    echo "$pid"
  done | sort -u
}

describe() {
  local pid
  for pid in "$@"; do
    [ -r "/proc/$pid/cmdline" ] || continue
    printf '  pid %s (parent %s, %s): %s\n' "$pid" \
      "$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" \
      "$(awk '/^State:/ { print $2 $3 }' "/proc/$pid/status" 2>/dev/null)" \
      "$(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-200)"
  done
}

stacks() {
  local pid
  command -v gdb >/dev/null 2>&1 || { echo "  (gdb not installed: no stacks)"; return; }
  for pid in "$@"; do
    [ -r "/proc/$pid/cmdline" ] || continue
    echo "---- stacks of pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-120)"
    timeout 60 gdb -p "$pid" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt 25' 2>/dev/null \
      | grep -a -E '^(Thread|#)' | cut -c1-200 | head -n 150
  done
}

# The distinct pids among the arguments, on one line.
distinct() {
  echo "$@" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -un | tr '\n' ' '
}

kill_all() {
  [ -n "${*// /}" ] || return 0
  kill -KILL "$@" 2>/dev/null || true
}

start=$(date +%s)
echo "== $NAME (limit ${LIMIT}s): $*"
setsid "$@" < /dev/null > "$LOG" 2>&1 &
PID=$!
# setsid forks only when the caller leads a process group; either way the
# command's session id is the pid of the process we started.
SID=$PID

status=""
while :; do
  if ! kill -0 "$PID" 2>/dev/null; then
    wait "$PID"; status=$?; break
  fi
  if [ $(( $(date +%s) - start )) -ge "$LIMIT" ]; then
    status=timeout; break
  fi
  sleep 1
done
elapsed=$(( $(date +%s) - start ))

failed=0
if [ "$status" = timeout ]; then
  failed=1
  echo "!! $NAME: TIME LIMIT of ${LIMIT}s passed; the step is stopped"
  unfinished_tests "$LOG"
  echo "-- last lines of $LOG:"
  tail -n 25 "$LOG" | cut -c1-300
  pids="$(distinct "$(session_pids "$SID") $(log_holders)")"
  echo "-- processes of the step:"
  # shellcheck disable=SC2086
  describe $pids
  # shellcheck disable=SC2086
  stacks $pids
  # shellcheck disable=SC2086
  kill_all $pids
else
  echo "-- $NAME ended with status $status after ${elapsed}s"
  summary "$LOG" 40
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "-- last lines of $LOG:"
    tail -n 40 "$LOG" | cut -c1-300
  fi
  # Anything the command left behind: give it a moment to finish exiting.
  for _ in 1 2 3 4 5; do
    left="$(distinct "$(session_pids "$SID") $(log_holders)")"
    [ -n "${left// /}" ] || break
    sleep 1
  done
  if [ -n "${left// /}" ]; then
    failed=1
    echo "!! $NAME: processes outlived the step (they would keep CI's output open):"
    # shellcheck disable=SC2086
    describe $left
    # shellcheck disable=SC2086
    stacks $left
    # shellcheck disable=SC2086
    kill_all $left
  fi
fi

[ "$failed" -eq 0 ] && echo "ok $NAME (${elapsed}s)" || echo "FAILED $NAME (${elapsed}s)"
exit "$failed"
