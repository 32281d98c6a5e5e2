#!/usr/bin/env bash
# Documentation checks, run by CI after the tests:
#
#   1. Doc coverage: every public symbol of ProcessPoolCore, ProcessPoolLocal,
#      ProcessPool and ProcessPoolSSH has a doc comment; every public function,
#      initializer and subscript documents each of its parameters
#      (`- Parameter name:` or a `- Parameters:` list naming it); every one
#      that throws (and every property whose getter throws) has a `- Throws:`
#      line. Read from the modules' symbol graphs (public symbols; members
#      synthesized by the compiler or inherited from other modules, and doc
#      comments inherited from protocol requirements, do not count). Each
#      offender is printed as `Module: symbol path: what is missing`.
#   2. DocC: the documentation of ProcessPool (with its catalog,
#      Sources/ProcessPool/ProcessPool.docc) and of ProcessPoolSSH is built
#      with swift-docc-plugin and --warnings-as-errors: an unresolved symbol
#      link, a documented parameter that does not exist, or any other DocC
#      warning fails the check.
#
# `import ProcessPool` re-exports ProcessPoolCore and ProcessPoolLocal, but
# the symbol graph SwiftPM extracts for the plugin holds only ProcessPool's
# own declarations. So the script extracts ProcessPool's graph once more with
# the re-exported modules included (`-experimental-allowed-reexported-modules`)
# and hands it to the plugin (`--additional-symbol-graph-dir`): the archive
# then documents every type a user of `import ProcessPool` sees, under
# ProcessPool, and the catalog's links to them resolve.
#
# Usage: bash Scripts/check-docs.sh [--coverage-only | --docc-only]
# Environment: DOCS_SCRATCH, the build folder (default .build-docs, apart from
# .build so it never waits on another build); DOCS_OUTPUT, where the archives
# go (default $DOCS_SCRATCH/docc-out: ProcessPool.doccarchive and
# ProcessPoolSSH.doccarchive, to serve or open with `docc preview`/a browser).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH=/opt/swift/usr/bin:$PATH
fi

scratch=${DOCS_SCRATCH:-.build-docs}
output=${DOCS_OUTPUT:-$scratch/docc-out}
run_coverage=1
run_docc=1
case "${1:-}" in
    --coverage-only) run_docc=0 ;;
    --docc-only) run_coverage=0 ;;
    "") ;;
    *) echo "usage: $0 [--coverage-only | --docc-only]" >&2; exit 2 ;;
esac

start=$SECONDS
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The four library modules (ProcessPoolSSH depends on the other three).
echo "== build (ProcessPoolSSH and what it depends on)"
if ! swift build --scratch-path "$scratch" --target ProcessPoolSSH >"$log" 2>&1; then
    grep -E -v '^\[[0-9]+/[0-9]+\]' "$log" | tail -60
    echo "check-docs: the library modules do not build" >&2
    exit 1
fi
bin=$(swift build --scratch-path "$scratch" --show-bin-path | tail -1)
graphs=$scratch/docs-symbolgraphs
rm -rf "$graphs"
mkdir -p "$graphs/coverage" "$graphs/ProcessPool"

# swift-symbolgraph-extract over the built modules, found as SwiftPM's
# dump-symbol-graph finds them (without building the tests as it does).
ssh_cflags=()
for flag in $(pkg-config --cflags libssh2 2>/dev/null || true); do ssh_cflags+=(-Xcc "$flag"); done
extract() {
    local module=$1 out=$2
    shift 2
    swift symbolgraph-extract -module-name "$module" \
        -module-cache-path "$bin/ModuleCache" \
        -I "$bin/Modules" \
        -Xcc "-fmodule-map-file=$bin/CProcessPoolShim.build/module.modulemap" \
        -Xcc -I -Xcc Sources/CProcessPoolShim/include \
        -Xcc "-fmodule-map-file=$PWD/Transports/CLibSSH2/module.modulemap" \
        "${ssh_cflags[@]}" \
        -minimum-access-level public -output-dir "$out" "$@"
}

if [ $run_coverage = 1 ]; then
    echo "== doc coverage (symbol graphs)"
    for module in ProcessPoolCore ProcessPoolLocal ProcessPool ProcessPoolSSH; do
        if ! extract "$module" "$graphs/coverage" -skip-synthesized-members -skip-inherited-docs >"$log" 2>&1; then
            cat "$log"
            echo "check-docs: could not extract the symbol graph of $module" >&2
            exit 1
        fi
    done
    graphs_dir=$graphs/coverage
    python3 - "$graphs_dir" "$PWD" <<'PY' || status=1
import glob, json, os, re, sys

graphs, root = sys.argv[1], os.path.realpath(sys.argv[2])
MODULES = ["ProcessPoolCore", "ProcessPoolLocal", "ProcessPool", "ProcessPoolSSH"]
# Where our own public code lives: a symbol declared anywhere else (the
# standard library, swift-log) is not ours to document.
OWN = [os.path.join(root, "Sources") + os.sep, os.path.join(root, "Transports") + os.sep]
CALLABLE = {"swift.func", "swift.func.op", "swift.method", "swift.type.method",
            "swift.init", "swift.subscript", "swift.type.subscript"}
ACCESSORS = {"swift.property", "swift.type.property", "swift.var",
             "swift.subscript", "swift.type.subscript"}

def path_of(uri):
    return uri[len("file://"):] if uri.startswith("file://") else uri

def own(symbol):
    uri = symbol.get("location", {}).get("uri")
    return uri is not None and any(os.path.realpath(path_of(uri)).startswith(p) for p in OWN)

def doc_lines(symbol):
    doc = symbol.get("docComment")
    if not doc:
        return None
    # A comment from another declaration (inherited) does not count.
    loc = symbol.get("location", {}).get("uri")
    if doc.get("uri") and loc and path_of(doc["uri"]) != path_of(loc):
        return None
    lines = [l.get("text", "") for l in doc.get("lines", [])]
    return lines if any(l.strip() for l in lines) else None

ITEM = re.compile(r"^(\s*)[-*+]\s+(.*)$")

def documented_parameters(lines):
    names, parent_indent = set(), None
    for line in lines:
        m = ITEM.match(line)
        if parent_indent is not None:
            if m and len(m.group(1)) > parent_indent:
                name = re.match(r"([^\s:]+)\s*:", m.group(2))
                if name:
                    names.add(name.group(1))
                continue
            if line.strip() and len(line) - len(line.lstrip()) <= parent_indent:
                parent_indent = None
        if not m:
            continue
        body = m.group(2)
        single = re.match(r"[Pp]arameter\s+([^\s:]+)\s*:", body)
        if single:
            names.add(single.group(1))
        elif re.match(r"[Pp]arameters\s*:", body):
            parent_indent = len(m.group(1))
    return names

def documents_throws(lines):
    return any(re.match(r"^\s*[-*+]\s+[Tt]hrows\s*:\s*\S", l) for l in lines)

def throws(symbol):
    fragments = symbol.get("declarationFragments", [])
    kind = symbol["kind"]["identifier"]
    if kind in CALLABLE and kind not in ACCESSORS:
        # `throws` of the declaration itself, not of a closure parameter or
        # of a function type it returns: outside parentheses, before `->`.
        depth = 0
        for f in fragments:
            if f["kind"] == "keyword" and f["spelling"] in ("throws", "rethrows") and depth == 0:
                return True
            if f["kind"] == "text":
                text, i = f["spelling"], 0
                while i < len(text):
                    if text.startswith("->", i):
                        if depth == 0:
                            return False
                        i += 2
                        continue
                    if text[i] in "([<":
                        depth += 1
                    elif text[i] in ")]>" and depth > 0:
                        depth -= 1
                    i += 1
        return False
    if kind in ACCESSORS:
        braces = False
        for f in fragments:
            if f["kind"] == "text" and "{" in f["spelling"]:
                braces = True
            if braces and f["kind"] == "keyword" and f["spelling"] == "throws":
                return True
    return False

seen, checked, problems, missing_graphs = set(), 0, [], []
for module in MODULES:
    files = glob.glob(os.path.join(graphs, f"{module}.symbols.json")) + \
            glob.glob(os.path.join(graphs, f"{module}@*.symbols.json"))
    if not files:
        missing_graphs.append(module)
    for file in sorted(files):
        with open(file) as handle:
            graph = json.load(handle)
        for symbol in graph.get("symbols", []):
            precise = symbol["identifier"]["precise"]
            if "::SYNTHESIZED::" in precise or precise in seen:
                continue
            if symbol.get("accessLevel") not in ("public", "open") or not own(symbol):
                continue
            seen.add(precise)
            checked += 1
            name = ".".join(symbol.get("pathComponents", [])) or symbol["names"]["title"]
            kind = symbol["kind"]["identifier"]
            lines = doc_lines(symbol)
            where = path_of(symbol["location"]["uri"])[len(root) + 1:]
            line = symbol["location"].get("position", {}).get("line", -1) + 1
            def report(what):
                problems.append((module, name, what, f"{where}:{line}"))
            if lines is None:
                report("no doc comment")
                continue
            if kind in CALLABLE:
                documented = documented_parameters(lines)
                for p in symbol.get("functionSignature", {}).get("parameters", []):
                    # The parameter's own name (`name` in `init(named name:)`);
                    # its argument label is accepted too.
                    names = {p.get("internalName"), p.get("name")} - {None, "", "_"}
                    if names and not names & documented:
                        shown = p.get("internalName") or p.get("name")
                        report(f"parameter `{shown}` not documented")
            if throws(symbol) and not documents_throws(lines):
                report("throws, but no `- Throws:` line")

for module, name, what, where in problems:
    print(f"{module}: {name}: {what}  ({where})")
if missing_graphs:
    print("check-docs: no symbol graph for " + ", ".join(missing_graphs), file=sys.stderr)
print(f"doc coverage: {checked} public symbols checked, {len(problems)} problems")
sys.exit(1 if problems or missing_graphs else 0)
PY
fi

if [ $run_docc = 1 ]; then
    if ! extract ProcessPool "$graphs/ProcessPool" \
            -experimental-allowed-reexported-modules=ProcessPoolCore,ProcessPoolLocal >"$log" 2>&1; then
        cat "$log"
        echo "check-docs: could not extract the symbol graph of ProcessPool" >&2
        exit 1
    fi
    for target in ProcessPool ProcessPoolSSH; do
        echo "== DocC: $target"
        extra=()
        [ "$target" = ProcessPool ] && extra=(--additional-symbol-graph-dir "$graphs/ProcessPool")
        mkdir -p "$output"
        rm -rf "$output/$target.doccarchive"
        rc=0
        swift package --scratch-path "$scratch" \
            --allow-writing-to-directory "$output" \
            generate-documentation --target "$target" --warnings-as-errors "${extra[@]}" \
            --output-path "$output/$target.doccarchive" >"$log" 2>&1 || rc=$?
        # DocC's diagnostics: with --warnings-as-errors a warning fails the
        # build; one that slipped through as a warning fails the check too.
        if [ $rc != 0 ] || grep -E -q '^(warning|error): |: (warning|error): ' "$log"; then
            grep -E -v '^\[[0-9]+/[0-9]+\]' "$log" | tail -200
            echo "check-docs: DocC reported problems for $target (exit $rc)" >&2
            status=1
        else
            echo "ok: $output/$target.doccarchive"
        fi
    done
fi

echo "check-docs: $([ $status = 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status
