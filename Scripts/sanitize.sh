#!/usr/bin/env bash
# Runs the test suite (or part of it) under a sanitizer.
#
#   Scripts/sanitize.sh thread  [--filter REGEX] [--skip REGEX]   # ThreadSanitizer
#   Scripts/sanitize.sh address [--filter REGEX] [--skip REGEX]   # AddressSanitizer
#
# Builds into .build-<sanitizer>/ (kept apart from the normal build), runs
# `swift test --no-parallel` there and then reads the log: any sanitizer
# report (in the test runner or in a worker, whose stderr is the runner's)
# fails the run, even one the runner's exit status would not show. The log
# is .build-<sanitizer>/sanitize.log; a summary is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
kind="$1"; shift
case "$kind" in
  thread) pattern='WARNING: ThreadSanitizer|ERROR: ThreadSanitizer' ;;
  address)
    pattern='ERROR: AddressSanitizer|ERROR: LeakSanitizer'
    # Leaks are checked by the fuzzers (Scripts/fuzz.sh), which run the
    # readers and parsers. In the suite, a fork child's heap is full of
    # objects only the parent's other threads (gone in the child) point to,
    # and workers that exit() on purpose would end with LeakSanitizer's code.
    export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" ;;
  *) echo "sanitize: thread or address, not $kind" >&2; exit 2 ;;
esac
# Tasks that crash on purpose (Die, the CPython ports' crashes) write to
# address 8; the sanitizer in the worker reports that fault, which is not
# a finding.
deliberate='SEGV on unknown address 0x000000000008 '
count_reports() { grep -aE "$pattern" "$1" | grep -avc "$deliberate" || true; }
filter=()
while [ $# -gt 0 ]; do
  case "$1" in
    --filter) filter+=(--filter "$2"); shift 2 ;;
    --skip) filter+=(--skip "$2"); shift 2 ;;
    *) echo "sanitize: unknown argument $1" >&2; exit 2 ;;
  esac
done
scratch=".build-$kind"
log="$scratch/sanitize.log"
mkdir -p "$scratch"
start=$(date +%s)
swift build --build-tests --sanitize="$kind" --scratch-path "$scratch" 2>&1 | tail -3
built=$(date +%s)
# Workers that crash on purpose must not start Swift's crash reporter.
# The runner's output is shown as it comes (a CI step that times out can
# name the tests still running) and kept in the log.
set +e
SWIFT_BACKTRACE=enable=no stdbuf -oL -eL swift test --skip-build --sanitize="$kind" --scratch-path "$scratch" \
  --no-parallel "${filter[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
reports=$(count_reports "$log")
echo "sanitize $kind: build $((built - start)) s, tests $(( $(date +%s) - built )) s, runner exit $status, $reports sanitizer reports"
# (No pipefail below: `head` closing a pipe early is not a failure.)
set +o pipefail
grep -aE '^(✔|✘) Test run with|^Test run with' "$log" | tail -1
if [ "$reports" != 0 ]; then
  grep -aE -A12 "$pattern" "$log" | grep -av "$deliberate" | head -60
  status=1
fi
if [ "$status" != 0 ]; then
  grep -aE '^✘ Test .*(recorded an issue|failed)' "$log" | head -20
fi
exit $status
