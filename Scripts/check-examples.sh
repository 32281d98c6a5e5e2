#!/usr/bin/env bash
# Compiles, in Swift 6 language mode, every ```swift block of README.md and of
# the DocC articles (Sources/ProcessPool/ProcessPool.docc/*.md, when that
# folder exists) from a SEPARATE package that depends on this one by URL and
# version, and runs the runnable ones. Usage:
#
#     bash Scripts/check-examples.sh          # from anywhere; exits non-zero on failure
#     KEEP=1 bash Scripts/check-examples.sh   # keep the temporary folder to look at
#     VERBOSE=1 bash Scripts/check-examples.sh   # also print what the examples print
#
# How: the work tree as it is (tracked files plus untracked non-ignored ones,
# `git ls-files -co --exclude-standard`) is copied into a fresh git repository
# in a temporary folder, committed and tagged 0.2.0. A user package
# (swift-tools-version 6.0, so Swift 6 language mode) is generated next to it
# with `.package(url: "file://<tmp>/ProcessPool", from: "0.2.0")` and products
# ProcessPool and ProcessPoolSSH, built with `swift build`, and its runnable
# executables are run with a time limit (CHECK_EXAMPLES_TIMEOUT, default 120 s).
# The build is `-c release` (CHECK_EXAMPLES_CONFIGURATION=debug to change):
# the examples do real work, which a debug build makes minutes long.
# A failure names the markdown file and line of the block: the generated code
# carries `#sourceLocation` directives, so compiler errors point into the .md.
#
# THE CONVENTION. Every ```swift fence in those markdown files must be
# immediately preceded (the nearest non-blank line above the fence) by
#
#     <!-- check: KIND [compile-only] -->
#
# where KIND is one of:
#
#   declarations  File-scope declarations (types, extensions,
#                 `let tasks = TaskRegistry(...)`). All declaration blocks of
#                 one document are concatenated, in order, into one file
#                 Declarations.swift compiled into every target generated for
#                 that document (one module per target: no `public` needed).
#                 A document with only declarations gets a library target.
#   statements    Statements; they may use `try` and `await`. Each block is
#                 wrapped in its own `do { ... }`, so names do not clash, and
#                 compiled in four executable targets per document:
#                   <Doc>_AtMain      `@main struct` whose
#                                     `static func main() async throws` runs
#                                     the blocks (main actor);
#                   <Doc>_TopLevel    main.swift top-level code;
#                   <Doc>_Actor       an `actor` with one
#                                     `func blockN() async throws` per block,
#                                     called from a main;
#                   <Doc>_Nonisolated one `nonisolated func blockN() async throws`
#                                     per block, called from a main.
#                 Every generated main first calls
#                 `ProcessPoolExecutor.bootstrap(tasks)`, so a document with
#                 runnable statement blocks must declare `tasks` in one of its
#                 declarations blocks (the check fails saying so otherwise).
#                 `import` lines of a statements block move to the file's top.
#   program       A complete program: it contains `@main`, or it is top-level
#                 code that calls `bootstrap`. Each becomes its own executable
#                 target <Doc>_ProgramN with the document's declarations plus
#                 the block, as App.swift when it contains `@main`, else as
#                 main.swift.
#   none          Not checked. Only for fragments that cannot compile (say, a
#                 declaration excerpt with `{ get }` signatures); use sparingly.
#
# The optional flag `compile-only` means compiled but never executed (an ssh
# example naming hosts that do not exist, say): such statement blocks go into
# functions that are never called (in the top-level-code target, into an
# `if` whose condition is false at run time, so that they are still checked
# as top-level code), and such programs are built but not run.
#
# Every generated file imports both ProcessPool and ProcessPoolSSH. A
# ```swift fence without a marker is an error ("README.md:LINE: swift block
# without a <!-- check: ... --> marker"), and so is a marker that is not
# followed by a ```swift fence. Blocks in other languages (```sh, plain ```)
# are ignored.
#
# CHECK_EXAMPLES_SELFTEST=1 proves that the check catches breakage: after the
# normal check (builds only, nothing run) it removes a `try` from a README
# block in the snapshot's copy and expects the build to fail naming that
# README line; then it drops the `isolation:` parameter of `withProcessPool`
# in the snapshot (tagged 0.2.1) and expects the @main program to fail to
# build. Nothing outside the temporary folder is modified.
#
# Needs: swift (or /opt/swift/usr/bin/swift), git, python3, and what `.ci/run`
# installs (libssh2-1-dev, pkg-config). Swift packages resolve as for the
# main package (here: git maps https://github.com/ to a local mirror).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH=/opt/swift/usr/bin:$PATH
fi
for tool in swift git python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "check-examples: $tool not found" >&2; exit 2; }
done
git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    || { echo "check-examples: $repo is not a git work tree" >&2; exit 2; }

started=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-examples.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "check-examples: kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
case "$tmp" in
    *[!A-Za-z0-9._/-]*) echo "check-examples: temporary folder $tmp: use a TMPDIR without spaces or special characters (it goes into a file:// URL)" >&2; exit 2 ;;
esac

# 1. The snapshot: the work tree as it is, as a git repository tagged 0.2.0.
snapshot="$tmp/ProcessPool"
mkdir -p "$snapshot"
(
    cd "$repo"
    git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
        # A tracked file deleted in the work tree is not part of the snapshot.
        if [ -e "$f" ] || [ -L "$f" ]; then
            cp -P --parents -- "$f" "$snapshot/"
        fi
    done
)
git_snapshot() {
    git -C "$snapshot" -c user.name=check-examples -c user.email=check-examples@localhost \
        -c commit.gpgsign=false -c tag.gpgsign=false -c init.defaultBranch=main "$@"
}
git_snapshot init -q
git_snapshot add -A -f .
git_snapshot commit -q --no-verify -m "check-examples snapshot of $repo"
git_snapshot tag 0.2.0
echo "check-examples: snapshot of $repo ($(git -C "$snapshot" ls-files | wc -l) files) tagged 0.2.0 at $snapshot"

# 2-4. Generate the user package, build it, run it (python: parsing markdown).
export CHECK_EXAMPLES_TMP="$tmp" CHECK_EXAMPLES_SNAPSHOT="$snapshot" CHECK_EXAMPLES_STARTED="$started"
python3 - <<'PY'
import os, re, shutil, subprocess, sys, time

TMP = os.environ["CHECK_EXAMPLES_TMP"]
SNAPSHOT = os.environ["CHECK_EXAMPLES_SNAPSHOT"]
STARTED = int(os.environ["CHECK_EXAMPLES_STARTED"])
PKG = os.path.join(TMP, "UserPackage")
SCRATCH = os.path.join(TMP, "build")
CACHE = os.path.join(TMP, "swiftpm-cache")
TIMEOUT = int(os.environ.get("CHECK_EXAMPLES_TIMEOUT", "120"))
SELFTEST = os.environ.get("CHECK_EXAMPLES_SELFTEST", "0") == "1"
VERBOSE = os.environ.get("VERBOSE", "0") == "1"
# release, as users run pool programs: in debug the README's primes job alone
# takes minutes on a busy 2-core machine, in release about a second.
CONFIGURATION = os.environ.get("CHECK_EXAMPLES_CONFIGURATION", "release")
DOCC = "Sources/ProcessPool/ProcessPool.docc"
KINDS = ("declarations", "statements", "program", "none")
FLAGS = ("compile-only",)

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
MARKER = re.compile(r"^\s*<!--\s*check:(.*?)-->\s*$")
IMPORT = re.compile(r"^\s*(@\w+(\(.*?\))?\s+)*import\s+\S")
TASKS = re.compile(r"^\s*((public|package|internal|fileprivate|private|nonisolated(\(unsafe\))?)\s+)*(let|var)\s+tasks\b", re.M)
MAIN_ATTR = re.compile(r"^\s*@main\b", re.M)


def say(msg):
    print(f"check-examples: {msg}", flush=True)


class Failure(Exception):
    pass


def documents(root):
    """README.md, then the DocC articles in name order (the folder may be absent)."""
    docs = []
    if os.path.isfile(os.path.join(root, "README.md")):
        docs.append("README.md")
    docc = os.path.join(root, DOCC)
    if os.path.isdir(docc):
        docs += [f"{DOCC}/{n}" for n in sorted(os.listdir(docc))
                 if n.endswith(".md") and os.path.isfile(os.path.join(docc, n))]
    return docs


def strip_indent(line, indent):
    n = 0
    while n < indent and n < len(line) and line[n] == " ":
        n += 1
    return line[n:]


def parse(root, rel):
    """The swift blocks of one markdown file, and the errors of its markers."""
    lines = open(os.path.join(root, rel), encoding="utf-8").read().split("\n")
    blocks, errors = [], []
    pending = None          # (line number, kind, flags) of a marker awaiting its fence
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        fence = FENCE.match(line)
        if fence and not (fence.group(2)[0] == "`" and "`" in fence.group(3)):
            indent, mark, info = len(fence.group(1)), fence.group(2), fence.group(3).strip()
            language = info.split()[0].lower() if info else ""
            body, j = [], i + 1
            while j < len(lines):
                close = re.match(r"^\s*(`{3,}|~{3,})\s*$", lines[j])
                if close and close.group(1)[0] == mark[0] and len(close.group(1)) >= len(mark):
                    break
                body.append(strip_indent(lines[j], indent))
                j += 1
            if language == "swift":
                if j == len(lines):
                    errors.append(f"{rel}:{number}: swift block is never closed")
                if pending is None:
                    errors.append(f"{rel}:{number}: swift block without a <!-- check: ... --> marker")
                elif pending[1] is None:
                    pass    # its marker is invalid, and said so
                else:
                    blocks.append({"doc": rel, "line": number, "first": number + 1,
                                   "kind": pending[1], "compile_only": "compile-only" in pending[2],
                                   "body": body})
            elif pending is not None:
                errors.append(f"{rel}:{pending[0]}: check marker is followed by a ```{language} block, not a ```swift block")
            pending = None
            i = j + 1
            continue
        if line.strip():
            if pending is not None:
                errors.append(f"{rel}:{pending[0]}: check marker is not followed by a ```swift block")
                pending = None
            marker = MARKER.match(line)
            if marker:
                words = marker.group(1).split()
                if not words or words[0] not in KINDS:
                    errors.append(f"{rel}:{number}: unknown check kind {words[0] if words else '(none)'!r}; "
                                  f"use one of {', '.join(KINDS)}")
                    pending = (number, None, [])
                elif any(w not in FLAGS for w in words[1:]):
                    errors.append(f"{rel}:{number}: unknown check flag in {' '.join(words[1:])!r}; "
                                  f"the only flag is compile-only")
                    pending = (number, None, [])
                else:
                    pending = (number, words[0], words[1:])
        i += 1
    if pending is not None:
        errors.append(f"{rel}:{pending[0]}: check marker is not followed by a ```swift block")
    return blocks, errors


def slug(rel, taken):
    stem = os.path.splitext(os.path.basename(rel))[0]
    name = re.sub(r"[^A-Za-z0-9]", "_", stem)
    if ".docc/" in rel:
        name = "DocC_" + name
    if not name[0].isalpha():
        name = "Doc_" + name
    base, n = name, 2
    while name.lower() in taken:
        name, n = f"{base}{n}", n + 1
    taken.add(name.lower())
    return name


def swift_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def located(block, body=None):
    """The block's lines, with compiler diagnostics pointing into the markdown."""
    body = block["body"] if body is None else body
    return ([f"#sourceLocation(file: {swift_string(block['doc'])}, line: {block['first']})"]
            + body + ["#sourceLocation()"])


def split_imports(block):
    """A statements block's import lines (for the file's top) and its body with
    those lines blank (so line numbers stay right)."""
    imports, body = [], []
    for line in block["body"]:
        if IMPORT.match(line):
            imports.append(line.strip())
            body.append("")
        else:
            body.append(line)
    return imports, body


HEADER_IMPORTS = ["import ProcessPool", "import ProcessPoolSSH"]

SUPPORT = """\
// Generated by Scripts/check-examples.sh; do not edit.
import Glibc

/// Tells on stderr which block runs, so a failure can be traced to its line.
func checkExamplesEnter(_ location: String) {
    let text = "check-examples: running \\(location)\\n"
    _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

/// False at run time, unknown to the compiler: guards compile-only blocks.
var checkExamplesNever: Bool { CommandLine.arguments.count < 0 }
"""


def header(rel, extra_imports=()):
    lines = [f"// Generated by Scripts/check-examples.sh from {rel}; do not edit."]
    for imp in list(HEADER_IMPORTS) + list(extra_imports):
        if imp not in lines:
            lines.append(imp)
    return lines + [""]


def do_block(block, body, indent):
    pad = " " * indent
    return [f"{pad}do {{"] + located(block, body) + [f"{pad}}}"]


def generate(root):
    """Writes the user package from the markdown under root. Returns the plan."""
    docs = documents(root)
    all_errors, plan = [], []
    taken = set()
    for rel in docs:
        blocks, errors = parse(root, rel)
        all_errors += errors
        plan.append({"doc": rel, "name": slug(rel, taken), "blocks": blocks, "targets": []})
    for doc in plan:
        decls = [b for b in doc["blocks"] if b["kind"] == "declarations"]
        stmts = [b for b in doc["blocks"] if b["kind"] == "statements"]
        runnable = [b for b in stmts if not b["compile_only"]]
        has_tasks = any(TASKS.search("\n".join(b["body"])) for b in decls)
        doc["has_tasks"] = has_tasks
        if runnable and not has_tasks:
            all_errors.append(
                f"{doc['doc']}:{runnable[0]['line']}: a runnable statements block, but no "
                f"`<!-- check: declarations -->` block of {doc['doc']} declares `let tasks = TaskRegistry(...)`, "
                f"which the generated mains pass to `ProcessPoolExecutor.bootstrap(tasks)` "
                f"(declare it, or mark the block `compile-only`)")
    if all_errors:
        raise Failure("\n".join(all_errors))

    if os.path.isdir(os.path.join(PKG, "Sources")):
        shutil.rmtree(os.path.join(PKG, "Sources"))
    os.makedirs(PKG, exist_ok=True)

    def write(target, files):
        folder = os.path.join(PKG, "Sources", target)
        os.makedirs(folder, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")

    for doc in plan:
        rel, name = doc["doc"], doc["name"]
        decls = [b for b in doc["blocks"] if b["kind"] == "declarations"]
        stmts = [b for b in doc["blocks"] if b["kind"] == "statements"]
        progs = [b for b in doc["blocks"] if b["kind"] == "program"]
        runnable = [b for b in stmts if not b["compile_only"]]
        declarations = header(rel)
        for b in decls:
            declarations += located(b) + [""]
        declarations = "\n".join(declarations)
        bootstrap = ["ProcessPoolExecutor.bootstrap(tasks)"] if doc["has_tasks"] else []

        if stmts:
            imports, bodies = [], {}
            for b in stmts:
                imps, body = split_imports(b)
                imports += imps
                bodies[id(b)] = body
            top = header(rel, imports)

            def enter(b, context, indent):
                where = swift_string(f"{rel}:{b['line']} ({context})")
                return [" " * indent + f"checkExamplesEnter({where})"]

            # (1) @main async main: the main actor.
            src = top + ["@main struct CheckExamplesMain {",
                         "    static func main() async throws {"]
            src += ["        " + l for l in bootstrap]
            for b in stmts:
                if not b["compile_only"]:
                    src += enter(b, "@main async main", 8) + do_block(b, bodies[id(b)], 8)
            src += ["    }"]
            for k, b in enumerate(stmts, 1):
                if b["compile_only"]:
                    src += ["", f"    // compile-only: never called", f"    @MainActor static func compileOnly{k}() async throws {{"]
                    src += do_block(b, bodies[id(b)], 8) + ["    }"]
            src += ["}"]
            doc["targets"].append(("AtMain", {"Declarations.swift": declarations, "CheckSupport.swift": SUPPORT,
                                              "App.swift": "\n".join(src)}, bool(runnable), stmts))

            # (2) main.swift top-level code.
            src = list(top) + bootstrap
            for k, b in enumerate(stmts, 1):
                if b["compile_only"]:
                    src += ["// compile-only: never runs", "if checkExamplesNever {"]
                    src += do_block(b, bodies[id(b)], 4) + ["}"]
                else:
                    src += enter(b, "top-level code", 0) + do_block(b, bodies[id(b)], 0)
            doc["targets"].append(("TopLevel", {"Declarations.swift": declarations, "CheckSupport.swift": SUPPORT,
                                                "main.swift": "\n".join(src)}, bool(runnable), stmts))

            # (3) an actor method per block.
            src = top + ["actor CheckExamplesActor {"]
            for k, b in enumerate(stmts, 1):
                src += ["    // compile-only: never called" if b["compile_only"] else f"    // {rel}:{b['line']}",
                        f"    func block{k}() async throws {{"] + do_block(b, bodies[id(b)], 8) + ["    }"]
            src += ["}", "", "@main struct CheckExamplesMain {", "    static func main() async throws {"]
            src += ["        " + l for l in bootstrap]
            src += ["        let runner = CheckExamplesActor()"]
            for k, b in enumerate(stmts, 1):
                if not b["compile_only"]:
                    src += enter(b, "actor method", 8) + [f"        try await runner.block{k}()"]
            src += ["        _ = runner", "    }", "}"]
            doc["targets"].append(("Actor", {"Declarations.swift": declarations, "CheckSupport.swift": SUPPORT,
                                             "App.swift": "\n".join(src)}, bool(runnable), stmts))

            # (4) a nonisolated async function per block.
            src = list(top)
            for k, b in enumerate(stmts, 1):
                src += ["// compile-only: never called" if b["compile_only"] else f"// {rel}:{b['line']}",
                        f"nonisolated func checkExamplesBlock{k}() async throws {{"] + do_block(b, bodies[id(b)], 4) + ["}", ""]
            src += ["@main struct CheckExamplesMain {", "    static func main() async throws {"]
            src += ["        " + l for l in bootstrap]
            for k, b in enumerate(stmts, 1):
                if not b["compile_only"]:
                    src += enter(b, "nonisolated async function", 8) + [f"        try await checkExamplesBlock{k}()"]
            src += ["    }", "}"]
            doc["targets"].append(("Nonisolated", {"Declarations.swift": declarations, "CheckSupport.swift": SUPPORT,
                                                   "App.swift": "\n".join(src)}, bool(runnable), stmts))

        for k, b in enumerate(progs, 1):
            file = "App.swift" if MAIN_ATTR.search("\n".join(b["body"])) else "main.swift"
            src = header(rel) + located(b)
            doc["targets"].append((f"Program{k}", {"Declarations.swift": declarations, file: "\n".join(src)},
                                   not b["compile_only"], [b]))

        if decls and not stmts and not progs:
            doc["targets"].append(("Declarations", {"Declarations.swift": declarations}, None, decls))

        named = []
        for suffix, files, run, covered in doc["targets"]:
            target = f"{name}_{suffix}"
            write(target, files)
            named.append({"target": target, "run": run, "library": run is None,
                          "blocks": [f"{b['doc']}:{b['line']}" for b in covered]})
        doc["targets"] = named

    products = [".product(name: \"ProcessPool\", package: \"ProcessPool\")",
                ".product(name: \"ProcessPoolSSH\", package: \"ProcessPool\")"]
    targets = []
    for doc in plan:
        for t in doc["targets"]:
            kind = ".target" if t["library"] else ".executableTarget"
            targets.append(f"        {kind}(name: {swift_string(t['target'])}, dependencies: [\n"
                           f"            {products[0]},\n            {products[1]},\n        ]),")
    manifest = f"""// swift-tools-version: 6.0
// Generated by Scripts/check-examples.sh: the markdown examples of ProcessPool,
// compiled from a package that depends on it by URL and version.
import PackageDescription

let package = Package(
    name: "UserPackage",
    dependencies: [
        .package(url: {swift_string("file://" + SNAPSHOT)}, from: "0.2.0"),
    ],
    targets: [
{chr(10).join(targets)}
    ]
)
"""
    with open(os.path.join(PKG, "Package.swift"), "w", encoding="utf-8") as f:
        f.write(manifest)
    return plan


def swift(*args, log=None):
    config = ["-c", CONFIGURATION] if args[0] == "build" else []
    cmd = ["swift", *args, *config, "--package-path", PKG, "--scratch-path", SCRATCH, "--cache-path", CACHE]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    return proc.returncode, proc.stdout


MD_ERROR = re.compile(r"^(\S+?\.md):(\d+):(\d+): error: (.*)$", re.M)
MD_WARNING = re.compile(r"^(\S+?\.md):(\d+):(\d+): warning: (.*)$", re.M)
DIAGNOSTIC = re.compile(r"^(/[^:\n]+):(\d+):(\d+): error: (.*)$", re.M)


def build(plan, label):
    """Builds the user package; on failure names the .md lines and the targets."""
    log = os.path.join(TMP, "build.log")
    t0 = time.time()
    code, out = swift("build", log=log)
    if code == 0:
        say(f"{label}: built in {time.time() - t0:.0f} s")
        # Warnings do not fail the check, but a user copying the block sees them too.
        warnings = dict.fromkeys(m.group(0) for m in MD_WARNING.finditer(out))
        for w in warnings:
            print(f"  (not an error) {w}")
        return True, {}
    # Errors in ProcessPool itself (the snapshot of the work tree) are not the
    # examples' fault: say so once, with paths relative to the repository.
    checkout = os.path.join(SCRATCH, "checkouts", "ProcessPool") + "/"
    dependency = [m for m in DIAGNOSTIC.finditer(out) if m.group(1).startswith(checkout)]
    if dependency:
        print(f"check-examples: {label}: BUILD FAILED after {time.time() - t0:.0f} s: "
              f"the ProcessPool package itself (the work tree as it is) does not compile:", flush=True)
        for m in dict.fromkeys(m.group(0)[len(checkout):] for m in dependency):
            print("  " + m)
        print(f"check-examples: full build log: {log}" + ("" if os.environ.get("KEEP") == "1" else " (KEEP=1 keeps it)"))
        return False, None
    # Rebuild target by target (the dependency is built by now) to tell which
    # contexts fail, and map the errors to markdown lines.
    by_location = {}
    other = []
    for doc in plan:
        for t in doc["targets"]:
            c, o = swift("build", "--target", t["target"], log=log)
            if c == 0:
                continue
            found = False
            for m in MD_ERROR.finditer(o):
                by_location.setdefault((m.group(1), int(m.group(2))), {}).setdefault(m.group(4), []).append(t["target"])
                found = True
            if not found:
                other.append((t["target"], o))
    print(f"check-examples: {label}: BUILD FAILED after {time.time() - t0:.0f} s", flush=True)
    for (rel, line), messages in sorted(by_location.items()):
        for message, targets in messages.items():
            print(f"{rel}:{line}: error: {message}   [in {', '.join(dict.fromkeys(targets))}]")
    if other or not by_location:
        print("check-examples: errors outside the markdown blocks (in the generated code around them):")
        for target, o in other or [("all", out)]:
            lines = [m.group(0) for m in DIAGNOSTIC.finditer(o)] or o.splitlines()[-30:]
            print(f"  [{target}]")
            for l in dict.fromkeys(lines):
                print("    " + l)
    print(f"check-examples: full build log: {log}" + ("" if os.environ.get("KEEP") == "1" else " (KEEP=1 keeps it)"))
    return False, by_location


def run(plan):
    code, out = swift("build", "--show-bin-path")
    bindir = out.strip().splitlines()[-1]
    failures = 0
    # An uncaught error's message, without a page of backtrace after it.
    env = dict(os.environ)
    env.setdefault("SWIFT_BACKTRACE", "enable=no")
    for doc in plan:
        doc["ran"] = 0
        for t in doc["targets"]:
            if not t["run"]:
                continue
            exe = os.path.join(bindir, t["target"])
            t0 = time.time()
            proc = subprocess.run(["timeout", "-k", "10", str(TIMEOUT), exe], cwd=TMP, stdin=subprocess.DEVNULL, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            doc["ran"] += 1
            took = time.time() - t0
            if proc.returncode == 0:
                if VERBOSE:
                    print(proc.stdout, end="")
                say(f"ran {t['target']} ({took:.2f} s)")
                continue
            failures += 1
            running = re.findall(r"^check-examples: running (\S+) \((.*)\)$", proc.stdout, re.M)
            where = running[-1][0] if running else (t["blocks"][0] if len(t["blocks"]) == 1 else None)
            why = (f"timed out after {TIMEOUT} s" if proc.returncode in (124, 137)
                   else f"exit code {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}")
            context = f" ({running[-1][1]})" if running else ""
            print(f"{where or doc['doc']}: error: the example failed when run{context}: {why}   [{t['target']}]")
            # The runtime's stack trace of an uncaught error says nothing here.
            output = re.sub(r"(?m)^Current stack trace:\n(^\d+ .*\n?)*", "", proc.stdout)
            print("  its output (last 40 lines):")
            for l in output.splitlines()[-40:]:
                print("    " + l)
    return failures


def summary(plan, built=True):
    for doc in plan:
        count = {k: 0 for k in KINDS}
        compile_only = 0
        for b in doc["blocks"]:
            count[b["kind"]] += 1
            compile_only += b["compile_only"] and b["kind"] != "none"
        n_targets = len(doc["targets"])
        print(f"check-examples: {doc['doc']}: {len(doc['blocks'])} swift blocks: "
              f"{count['declarations']} declarations, {count['statements']} statements, "
              f"{count['program']} program, {count['none']} none ({compile_only} compile-only); "
              f"{n_targets} targets {'built' if built else 'generated (build failed)'}, "
              f"{doc.get('ran', 0)} executables run", flush=True)


def selftest(plan):
    """Breaks a README block, then withProcessPool, in the snapshot only."""
    ok = True
    readme = os.path.join(SNAPSHOT, "README.md")
    original = open(readme, encoding="utf-8").read()
    lines = original.split("\n")
    checked = {}
    for b in next(d for d in plan if d["doc"] == "README.md")["blocks"]:
        if b["kind"] != "none":
            for n in range(b["first"], b["first"] + len(b["body"])):
                checked[n] = b
    target_line = next((n for n in sorted(checked) if re.search(r"\btry (pool\.submit\()", lines[n - 1])), None)
    if target_line is None:
        raise Failure("check-examples: selftest: no `try pool.submit(` line in a checked README block to break")
    lines[target_line - 1] = re.sub(r"\btry (pool\.submit\()", r"\1", lines[target_line - 1], count=1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    say(f"selftest 1: removed `try` before pool.submit at README.md:{target_line} (snapshot copy)")
    broken = generate(SNAPSHOT)
    built, errors = build(broken, "selftest 1 (expected to fail)")
    errors = errors or {}
    if built or not any(rel == "README.md" and line == target_line for rel, line in errors):
        print(f"check-examples: selftest 1 FAILED: the build did not fail naming README.md:{target_line}")
        ok = False
    else:
        say(f"selftest 1 passed: the build failed naming README.md:{target_line}")
    with open(readme, "w", encoding="utf-8") as f:
        f.write(original)

    source = os.path.join(SNAPSHOT, "Sources/ProcessPool/ProcessPoolExecutor+Init.swift")
    text = open(source, encoding="utf-8").read()
    patched = re.sub(r"\n[ \t]*isolation: isolated \(any Actor\)\? = #isolation,", "", text)
    if patched == text:
        raise Failure("check-examples: selftest: could not find withProcessPool's `isolation:` parameter to remove")
    with open(source, "w", encoding="utf-8") as f:
        f.write(patched)
    git = ["git", "-C", SNAPSHOT, "-c", "user.name=check-examples", "-c", "user.email=check-examples@localhost",
           "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    subprocess.run(git + ["commit", "-q", "--no-verify", "-am", "selftest: withProcessPool without isolation"], check=True)
    subprocess.run(git + ["tag", "0.2.1"], check=True)
    say("selftest 2: removed withProcessPool's `isolation:` parameter in the snapshot, tagged 0.2.1")
    plan = generate(SNAPSHOT)
    code, out = swift("package", "update", log=os.path.join(TMP, "build.log"))
    if code != 0:
        raise Failure("check-examples: selftest: swift package update failed:\n" + out)
    uses = {f"README.md:{b['line']}": b for b in next(d for d in plan if d["doc"] == "README.md")["blocks"]
            if any("withProcessPool" in l for l in b["body"])}
    built, errors = build(plan, "selftest 2 (expected to fail)")
    errors = errors or {}
    hit = [(rel, line) for rel, line in errors
           if rel == "README.md" and any(b["first"] <= line < b["first"] + len(b["body"]) for b in uses.values())]
    if built or not hit:
        print(f"check-examples: selftest 2 FAILED: the build did not fail in a README block using withProcessPool ({', '.join(uses)})")
        ok = False
    else:
        say(f"selftest 2 passed: the build failed at README.md:{hit[0][1]} (withProcessPool without isolation)")
    return ok


try:
    plan = generate(SNAPSHOT)
    n_targets = sum(len(d["targets"]) for d in plan)
    say(f"generated {PKG}: {n_targets} targets from {len(plan)} documents "
        f"({', '.join(d['doc'] for d in plan) or 'none'})")
    if n_targets == 0:
        summary(plan)
        say("no swift blocks to check")
        sys.exit(0)
    built, errors = build(plan, "user package")
    if not built:
        summary(plan, built=False)
        raise Failure("check-examples: the examples do not compile (errors above)" if errors is not None
                      else "check-examples: ProcessPool itself does not compile (errors above); the examples were not checked")
    failures = 0 if SELFTEST else run(plan)
    summary(plan)
    if failures:
        raise Failure(f"check-examples: {failures} example executable(s) failed (above)")
    if SELFTEST and not selftest(plan):
        raise Failure("check-examples: selftest failed")
    say(f"OK in {int(time.time()) - STARTED} s")
except Failure as e:
    print(str(e), flush=True)
    print(f"check-examples: FAILED after {int(time.time()) - STARTED} s", flush=True)
    sys.exit(1)
PY
