#!/usr/bin/env bash
# Builds and runs the libFuzzer targets in Fuzz/ (ASan + libFuzzer).
#
#   Scripts/fuzz.sh TARGET [--seconds N | --runs N] [-- extra libFuzzer flags]
#   Scripts/fuzz.sh all --seconds 20          # CI: every target briefly
#   Scripts/fuzz.sh TARGET --regress         # replay Fuzz/Regressions/TARGET only
#   Scripts/fuzz.sh TARGET --minimize CRASH  # minimize a crash into Fuzz/Regressions/TARGET/
#   Scripts/fuzz.sh build                     # build every target, run none
#   Scripts/fuzz.sh list
#   Scripts/fuzz.sh seeds                     # regenerate Fuzz/Seeds from Scripts/make-seeds.swift
#   Scripts/fuzz.sh record                    # record the test suite's traffic; add what is new to Fuzz/Seeds
#
# The core's sources are compiled straight into each fuzzer (not through
# SwiftPM, so Package.swift knows nothing of the fuzzers): swift-log as module
# Logging, the C shim with clang, ProcessPoolCore with -package-name so
# `package` symbols are visible. Everything goes under .build-fuzz/.
# A run replays Fuzz/Seeds/TARGET and Fuzz/Regressions/TARGET first; new
# corpus entries go to .build-fuzz/corpus/TARGET, crashes to
# .build-fuzz/crashes/TARGET/. Exit status is non-zero if any target failed.
set -euo pipefail
# ASan's default quarantine (256 MB) keeps every freed 64 KiB read buffer
# until it is unmapped, so each input faults fresh pages in: 1.5k inputs/s
# for `frames` against 14k with 16 MB (use-after-free of recent frees is
# still caught). Options given by the caller come after, so they win.
export ASAN_OPTIONS="quarantine_size_mb=16${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SWIFT_BIN="${SWIFT_BIN:-$(dirname "$(command -v swiftc 2>/dev/null || echo /opt/swift/usr/bin/swiftc)")}"
[ -x "$SWIFT_BIN/swiftc" ] || SWIFT_BIN=/opt/swift/usr/bin
SWIFTC="$SWIFT_BIN/swiftc"
CLANG="$SWIFT_BIN/clang"
OUT="${FUZZ_OUT:-$ROOT/.build-fuzz}"
OPT="${FUZZ_OPT:--O}"
TARGETS=(frames parent decoder worker forkserver)

usage() { sed -n 2,18p "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
TARGET="$1"; shift
SECONDS_ARG=""; RUNS_ARG=""; REGRESS=0; MINIMIZE=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_ARG="$2"; shift 2 ;;
    --runs) RUNS_ARG="$2"; shift 2 ;;
    --regress) REGRESS=1; shift ;;
    --minimize) MINIMIZE="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

newer_than() {  # newer_than OUTPUT INPUTS...: true if OUTPUT is missing or older than an input
  local out="$1"; shift
  [ -e "$out" ] || return 0
  local f
  for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
  return 1
}

build_common() {
  mkdir -p "$OUT/obj" "$OUT/include/CProcessPoolShim" "$OUT/modules"
  # The shim: the module map SwiftPM would generate.
  cat > "$OUT/include/CProcessPoolShim/module.modulemap" <<MAP
module CProcessPoolShim {
    header "$ROOT/Sources/CProcessPoolShim/include/CProcessPoolShim.h"
    export *
}
MAP
  if newer_than "$OUT/obj/shim.o" Sources/CProcessPoolShim/shim.c Sources/CProcessPoolShim/include/*.h; then
    echo "fuzz: building the C shim"
    "$CLANG" -c -O1 -g -fsanitize=fuzzer-no-link,address -ISources/CProcessPoolShim/include \
      Sources/CProcessPoolShim/shim.c -o "$OUT/obj/shim.o"
  fi
  if [ ! -d .build/checkouts/swift-log ]; then "$SWIFT_BIN/swift" package resolve; fi
  local log_sources=(.build/checkouts/swift-log/Sources/Logging/*.swift .build/checkouts/swift-log/Sources/Logging/*/*.swift)
  local existing=(); local f
  for f in "${log_sources[@]}"; do [ -f "$f" ] && existing+=("$f"); done
  if newer_than "$OUT/obj/Logging.o" "${existing[@]}"; then
    echo "fuzz: building swift-log (module Logging)"
    "$SWIFTC" -O -g -sanitize=address -parse-as-library -wmo -module-name Logging -package-name swift_log -swift-version 5 \
      -emit-module -emit-module-path "$OUT/modules/Logging.swiftmodule" \
      -c "${existing[@]}" -o "$OUT/obj/Logging.o"
  fi
  mapfile -t core_sources < <(find Sources/ProcessPoolCore -name '*.swift' | sort)
  if newer_than "$OUT/obj/ProcessPoolCore.o" "${core_sources[@]}" "$OUT/obj/Logging.o"; then
    echo "fuzz: building ProcessPoolCore (${#core_sources[@]} files, ASan + coverage)"
    "$SWIFTC" $OPT -g -sanitize=fuzzer,address -parse-as-library -wmo -module-name ProcessPoolCore -enable-testing \
      -package-name ProcessPool -swift-version 6 \
      -I "$OUT/modules" -I "$OUT/include/CProcessPoolShim" -I Sources/CProcessPoolShim/include \
      -emit-module -emit-module-path "$OUT/modules/ProcessPoolCore.swiftmodule" \
      -c "${core_sources[@]}" -o "$OUT/obj/ProcessPoolCore.o"
  fi
}

extra_sources() {  # sources from outside Fuzz/ a target compiles into itself
  case "$1" in
    forkserver) echo "Transports/ProcessPoolLocal/ForkServerProtocol.swift" ;;
  esac
}

build_target() {
  local t="$1"
  local src="Fuzz/Fuzz${t^}.swift"
  [ -f "$src" ] || { echo "fuzz: no target $t ($src)" >&2; return 1; }
  local sources=("$src" Fuzz/Shared/*.swift $(extra_sources "$t"))
  if newer_than "$OUT/bin/fuzz-$t" "${sources[@]}" "$OUT/obj/ProcessPoolCore.o" "$OUT/obj/shim.o"; then
    echo "fuzz: building fuzz-$t"
    mkdir -p "$OUT/bin" "$OUT/work/$t"
    local absolute=() f
    for f in "${sources[@]}"; do absolute+=("$ROOT/$f"); done
    # From a directory of its own: swiftc may leave module files in the
    # current directory when it links.
    (cd "$OUT/work/$t" && "$SWIFTC" $OPT -g -sanitize=fuzzer,address -parse-as-library -wmo -module-name "Fuzz${t^}" \
      -package-name ProcessPool -swift-version 6 \
      -I "$OUT/modules" -I "$OUT/include/CProcessPoolShim" -I "$ROOT/Sources/CProcessPoolShim/include" \
      "${absolute[@]}" "$OUT/obj/ProcessPoolCore.o" "$OUT/obj/Logging.o" "$OUT/obj/shim.o" \
      -o "$OUT/bin/fuzz-$t") 2>&1 | { grep -v "ld.gold: warning: Cannot export local symbol" || true; }
    [ "${PIPESTATUS[0]}" = 0 ] && [ -x "$OUT/bin/fuzz-$t" ] || { echo "fuzz: building fuzz-$t failed" >&2; return 1; }
  fi
}

run_target() {
  local t="$1"
  local corpus="$OUT/corpus/$t" crashes="$OUT/crashes/$t"
  mkdir -p "$corpus" "$crashes" "Fuzz/Seeds/$t" "Fuzz/Regressions/$t"
  local flags=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "-artifact_prefix=$crashes/")
  [ -f "Fuzz/Dictionaries/$t.dict" ] && flags+=("-dict=Fuzz/Dictionaries/$t.dict")
  # The worker reports each refused stream on stderr: keep the log readable
  # (libFuzzer keeps its own copy of stderr for crash reports).
  [ "$t" = worker ] && flags+=(-close_fd_mask=2)
  local status=0
  # Known crashes first: each regression input alone (they may still crash
  # until their fix lands; that is reported, not fatal to the other targets).
  local r
  for r in Fuzz/Regressions/"$t"/*; do
    [ -f "$r" ] || continue
    if ! "$OUT/bin/fuzz-$t" -rss_limit_mb=2048 -timeout=10 "$r" >"$OUT/regress-$t.log" 2>&1; then
      echo "fuzz: $t: regression input $r still crashes (see $OUT/regress-$t.log)"
      status=1
    fi
  done
  [ $REGRESS = 1 ] && return $status
  if [ -n "$RUNS_ARG" ]; then flags+=("-runs=$RUNS_ARG"); else flags+=("-max_total_time=${SECONDS_ARG:-60}"); fi
  echo "fuzz: running $t ${RUNS_ARG:+($RUNS_ARG runs)}${SECONDS_ARG:+(${SECONDS_ARG}s)}"
  local log="$OUT/fuzz-$t.log"
  if "$OUT/bin/fuzz-$t" "${flags[@]}" "${EXTRA[@]}" "$corpus" "Fuzz/Seeds/$t" >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' "$log" | sed "s/^/fuzz: $t: /"
  else
    echo "fuzz: $t FAILED (log: $log; crash inputs in $crashes/)"
    grep -E 'ERROR:|SUMMARY:|Fatal error|Test unit written' "$log" | head -5 | sed "s/^/fuzz: $t: /"
    status=1
  fi
  return $status
}

build_seeds() {  # builds Scripts/make-seeds.swift and writes Fuzz/Seeds/*
  mkdir -p "$OUT/bin"
  if newer_than "$OUT/bin/make-seeds" Scripts/make-seeds.swift Fuzz/Shared/*.swift "$OUT/obj/ProcessPoolCore.o"; then
    echo "fuzz: building make-seeds"
    # Linked with ASan only: its runtime has no-op coverage callbacks for
    # the instrumented core, and libFuzzer's main stays out.
    mkdir -p "$OUT/work/make-seeds"
    (cd "$OUT/work/make-seeds" && "$SWIFTC" $OPT -g -sanitize=address -parse-as-library -wmo -module-name MakeSeeds \
      -package-name ProcessPool -swift-version 6 \
      -I "$OUT/modules" -I "$OUT/include/CProcessPoolShim" -I "$ROOT/Sources/CProcessPoolShim/include" \
      "$ROOT/Scripts/make-seeds.swift" "$ROOT"/Fuzz/Shared/*.swift "$OUT/obj/ProcessPoolCore.o" "$OUT/obj/Logging.o" \
      "$OUT/obj/shim.o" -o "$OUT/bin/make-seeds") 2>&1 | { grep -v "ld.gold: warning: Cannot export local symbol" || true; }
  fi
  ASAN_OPTIONS=detect_leaks=0 "$OUT/bin/make-seeds"
}

# Seeds from real traffic: runs tests with PROCESSPOOL_RECORD_STREAMS set
# (every FrameSplitter, in the parent and in each worker, copies what it
# reads into a file), turns each stream into an input of the targets that
# read that direction, and lets libFuzzer's -merge add to Fuzz/Seeds only
# the inputs that reach new coverage. RECORD_FILTER picks the tests.
record_seeds() {
  local dir="$OUT/recorded" candidates="$OUT/candidates"
  local filter="${RECORD_FILTER:-SizeSweepTests|BulkTransferTests|MapTests|SubmitTests|FailurePolicyTests|BrokenPoolTests|WorkerLifecycleTests|ShutdownTests}"
  rm -rf "$dir" "$candidates"
  mkdir -p "$dir" "$candidates/frames" "$candidates/parent" "$candidates/worker"
  "$SWIFT_BIN/swift" build --build-tests
  echo "fuzz: recording the traffic of: $filter"
  PROCESSPOOL_RECORD_STREAMS="$dir" "$SWIFT_BIN/swift" test --skip-build --no-parallel --filter "$filter" \
    > "$OUT/record-tests.log" 2>&1 || { echo "fuzz: the recorded tests failed (see $OUT/record-tests.log)" >&2; return 1; }
  local f name n=0
  for f in "$dir"/*.stream; do
    [ -s "$f" ] || continue
    name="$(basename "$f" .stream)"
    n=$((n + 1))
    # Inputs are cut at 16 KiB (a seed's later frames are rarely new).
    case "$name" in
      to-parent-*)
        { printf '\001\077'; head -c 16384 "$f"; } > "$candidates/frames/$name"
        { printf '\000\000'; head -c 16384 "$f"; } > "$candidates/parent/$name" ;;
      to-worker-*)
        { printf '\000\077'; head -c 16384 "$f"; } > "$candidates/frames/$name"
        head -c 16384 "$f" > "$candidates/worker/$name" ;;
    esac
  done
  echo "fuzz: $n streams recorded"
  local t before flags
  for t in frames parent worker; do
    build_target "$t"
    before=$(ls "Fuzz/Seeds/$t" | wc -l)
    flags=(-merge=1 -rss_limit_mb=2048 -timeout=10)
    [ "$t" = worker ] && flags+=(-close_fd_mask=2)
    "$OUT/bin/fuzz-$t" "${flags[@]}" "Fuzz/Seeds/$t" "$candidates/$t" > "$OUT/merge-$t.log" 2>&1 \
      || { echo "fuzz: merging into $t failed (see $OUT/merge-$t.log)" >&2; return 1; }
    echo "fuzz: $t: $(( $(ls "Fuzz/Seeds/$t" | wc -l) - before )) recorded inputs reach new coverage (now $(ls "Fuzz/Seeds/$t" | wc -l) seeds)"
  done
}

# One build at a time (several runs may start together).
mkdir -p "$OUT"
exec 9>"$OUT/build.lock"
flock 9

case "$TARGET" in
  seeds) build_common; build_seeds; exit 0 ;;
  record) build_common; record_seeds; exit $? ;;
  list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
  common) build_common; exit 0 ;;
  build) build_common; for t in "${TARGETS[@]}"; do build_target "$t"; done; exit 0 ;;
  all) selected=("${TARGETS[@]}") ;;
  *) selected=("$TARGET") ;;
esac

build_common
for t in "${selected[@]}"; do build_target "$t"; done
flock -u 9
if [ -n "$MINIMIZE" ]; then
  mkdir -p "Fuzz/Regressions/$TARGET"
  dest="Fuzz/Regressions/$TARGET/$(basename "$MINIMIZE")"
  "$OUT/bin/fuzz-$TARGET" -rss_limit_mb=2048 -timeout=10 -minimize_crash=1 -runs="${RUNS_ARG:-20000}" \
    -exact_artifact_path="$dest" "$MINIMIZE" > "$OUT/minimize-$TARGET.log" 2>&1 || true
  [ -f "$dest" ] || cp "$MINIMIZE" "$dest"
  echo "fuzz: minimized $MINIMIZE into $dest ($(wc -c < "$dest") bytes): $(od -An -tx1 -v "$dest" | tr -d ' \n' | head -c 400)"
  "$OUT/bin/fuzz-$TARGET" -rss_limit_mb=2048 -timeout=10 "$dest" 2>&1 | grep -E '^ *#[0-9]+ |ERROR|Fatal error' | head -40 || true
  exit 0
fi
failed=0
for t in "${selected[@]}"; do run_target "$t" || failed=1; done
exit $failed
