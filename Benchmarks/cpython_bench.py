#!/usr/bin/env python3
"""CPython reference benchmark for concurrent.futures.ProcessPoolExecutor.

Standard library only (Python 3.11). Produces the CPython column of a
side-by-side table against the Swift implementation.

Usage:
    python3 cpython_bench.py [--start-method {fork,spawn,forkserver}]
                             [--rounds N] [--quick] [--only FIG[,FIG...]]

stdout: exactly ONE JSON object
    {"python": "3.11.7",
     "results": {"fork": {figure: value, ...}, "spawn": {...}, "forkserver": {...}}}
stderr: progress.

Every figure is the MEDIAN over --rounds rounds (default 5). Every executor
has max_workers=2 and mp_context=multiprocessing.get_context(start_method).
Timing uses time.perf_counter().

WORKLOADS (mirror these exactly on the Swift side)
--------------------------------------------------
Task functions (all top-level, picklable):
    noop(x)            -> x                      ("trivial task")
    echo(b)            -> b                      (returns its bytes argument)
    getpid_task(_)     -> os.getpid()
    count_primes(n)    -> number of primes p with 2 <= p < n, by trial
                          division: for each k in [2, n) try d = 2, 3, 4, ...
                          while d*d <= k; k is prime iff no d divides it.
                          (count_primes(150_000) == 13848; ~0.23 s in CPython 3.11
                          on this machine.)

"Warm executor": a fresh executor on which both workers have been started
and have each run a task (done by submitting 2 concurrent 50 ms sleep tasks
that return os.getpid() until 2 distinct worker pids have been seen and
len(executor._processes) == 2, then 10 noop round trips). Warm-up is outside
the timed region; each round of each figure uses its own new executor, shut
down (wait=True) outside the timed region.

Figure                  full           --quick        definition
first_result_s          -              -              t0; ex = ProcessPoolExecutor(2, mp_context);
                                                      ex.submit(noop, 1).result(); t1.  seconds.
                                                      (shutdown outside timed region)
round_trip_us           2_000 trips    200 trips      warm ex; repeat: ex.submit(noop, i).result();
                                                      microseconds per round trip.
submit_tasks_per_s      20_000 tasks   2_000 tasks    warm ex; futs = [ex.submit(noop, i) for i in
                                                      range(N)]; wait(futs). tasks / s.
map_c1_tasks_per_s      N=20_000       N=2_000        warm ex; list(ex.map(noop, range(N), chunksize=1))
map_c64_tasks_per_s     N=200_000      N=20_000       same, chunksize=64
map_c1024_tasks_per_s   N=200_000      N=20_000       same, chunksize=1024
payload_64mib_mb_per_s  64 MiB x 4     8 MiB x 4      warm ex; blob = bytes(size) (zeros);
                                                      4 x sequential ex.submit(echo, blob).result();
                                                      MB/s = 2 * size * 4 / 1e6 / seconds
                                                      (MB = 10**6 bytes; both directions counted).
                                                      Echo length verified == size.
cpu_speedup             8 x count_primes(150_000)     serial: [count_primes(N) for _ in range(8)] in
                                       (quick: 30_000) the parent; pool: warm ex;
                                                      list(ex.map(count_primes, [N]*8)) (chunksize 1).
                                                      value = serial_time / pool_time, per round;
                                                      median of the per-round ratios.
worker_rss_kib          -              -              fresh ex; pid = ex.submit(getpid_task, 0).result();
                                                      VmRSS (kB) from /proc/<pid>/status of that worker.
                                                      Measured FIRST for each start method (before the
                                                      other figures), since a forked worker's RSS includes
                                                      pages inherited from the parent's (growing) heap.

pending_futures_1m_mib is not measured for CPython.
"""

import argparse
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait

# --------------------------------------------------------------------------
# Workload parameters
# --------------------------------------------------------------------------
WORKERS = 2
PARAMS_FULL = {
    "round_trips": 2_000,
    "submit_n": 20_000,
    "map_c1_n": 20_000,
    "map_c64_n": 200_000,
    "map_c1024_n": 200_000,
    "payload_bytes": 64 * 1024 * 1024,
    "payload_reps": 4,
    "cpu_tasks": 8,
    "primes_n": 150_000,
}
PARAMS_QUICK = {
    "round_trips": 200,
    "submit_n": 2_000,
    "map_c1_n": 2_000,
    "map_c64_n": 20_000,
    "map_c1024_n": 20_000,
    "payload_bytes": 8 * 1024 * 1024,
    "payload_reps": 4,
    "cpu_tasks": 8,
    "primes_n": 30_000,
}

FIGURES = [
    "first_result_s",
    "round_trip_us",
    "submit_tasks_per_s",
    "map_c1_tasks_per_s",
    "map_c64_tasks_per_s",
    "map_c1024_tasks_per_s",
    "payload_64mib_mb_per_s",
    "cpu_speedup",
    "worker_rss_kib",
]
START_METHODS = ["fork", "spawn", "forkserver"]


# --------------------------------------------------------------------------
# Task functions (top-level so they pickle by reference)
# --------------------------------------------------------------------------
def noop(x):
    return x


def echo(b):
    return b


def getpid_task(_):
    return os.getpid()


def sleep_getpid(seconds):
    time.sleep(seconds)
    return os.getpid()


def count_primes(n):
    """Count primes p with 2 <= p < n by trial division up to sqrt(k)."""
    count = 0
    for k in range(2, n):
        d = 2
        is_prime = True
        while d * d <= k:
            if k % d == 0:
                is_prime = False
                break
            d += 1
        if is_prime:
            count += 1
    return count


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def log(msg):
    print(msg, file=sys.stderr, flush=True)


def new_executor(ctx):
    return ProcessPoolExecutor(max_workers=WORKERS, mp_context=ctx)


def warm_executor(ctx):
    """Return an executor whose 2 workers are both started and have run tasks."""
    ex = new_executor(ctx)
    seen = set()
    for _ in range(100):
        futs = [ex.submit(sleep_getpid, 0.05) for _ in range(WORKERS)]
        seen.update(f.result() for f in futs)
        if len(seen) >= WORKERS and len(ex._processes) >= WORKERS:
            break
    else:
        raise RuntimeError("could not start both workers (saw pids %r)" % seen)
    for i in range(10):
        ex.submit(noop, i).result()
    return ex


def read_vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # value is in kB
    raise RuntimeError("VmRSS not found for pid %d" % pid)


# --------------------------------------------------------------------------
# One round of each figure; returns the value for that round
# --------------------------------------------------------------------------
def fig_first_result_s(ctx, p):
    t0 = time.perf_counter()
    ex = new_executor(ctx)
    r = ex.submit(noop, 1).result()
    t1 = time.perf_counter()
    ex.shutdown(wait=True)
    assert r == 1
    return t1 - t0


def fig_round_trip_us(ctx, p):
    n = p["round_trips"]
    ex = warm_executor(ctx)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            ex.submit(noop, i).result()
        t1 = time.perf_counter()
    finally:
        ex.shutdown(wait=True)
    return (t1 - t0) / n * 1e6


def fig_submit_tasks_per_s(ctx, p):
    n = p["submit_n"]
    ex = warm_executor(ctx)
    try:
        t0 = time.perf_counter()
        futs = [ex.submit(noop, i) for i in range(n)]
        wait(futs)
        t1 = time.perf_counter()
        assert sum(f.result() for f in futs) == n * (n - 1) // 2
    finally:
        ex.shutdown(wait=True)
    return n / (t1 - t0)


def _map_figure(ctx, n, chunksize):
    ex = warm_executor(ctx)
    try:
        t0 = time.perf_counter()
        out = list(ex.map(noop, range(n), chunksize=chunksize))
        t1 = time.perf_counter()
        assert len(out) == n and out[-1] == n - 1 and sum(out) == n * (n - 1) // 2
    finally:
        ex.shutdown(wait=True)
    return n / (t1 - t0)


def fig_map_c1_tasks_per_s(ctx, p):
    return _map_figure(ctx, p["map_c1_n"], 1)


def fig_map_c64_tasks_per_s(ctx, p):
    return _map_figure(ctx, p["map_c64_n"], 64)


def fig_map_c1024_tasks_per_s(ctx, p):
    return _map_figure(ctx, p["map_c1024_n"], 1024)


def fig_payload_64mib_mb_per_s(ctx, p):
    size, reps = p["payload_bytes"], p["payload_reps"]
    blob = bytes(size)
    ex = warm_executor(ctx)
    try:
        t0 = time.perf_counter()
        lengths = []
        for _ in range(reps):
            lengths.append(len(ex.submit(echo, blob).result()))
        t1 = time.perf_counter()
    finally:
        ex.shutdown(wait=True)
    if any(n != size for n in lengths):
        raise RuntimeError("echo length mismatch: %r != %d" % (lengths, size))
    del blob
    return 2 * size * reps / 1e6 / (t1 - t0)


def fig_cpu_speedup(ctx, p):
    n, k = p["primes_n"], p["cpu_tasks"]
    t0 = time.perf_counter()
    serial = [count_primes(n) for _ in range(k)]
    serial_s = time.perf_counter() - t0
    ex = warm_executor(ctx)
    try:
        t0 = time.perf_counter()
        pooled = list(ex.map(count_primes, [n] * k))
        pool_s = time.perf_counter() - t0
    finally:
        ex.shutdown(wait=True)
    assert serial == pooled, (serial, pooled)
    log("      serial %.3fs pool %.3fs (count_primes(%d)=%d)"
        % (serial_s, pool_s, n, serial[0]))
    return serial_s / pool_s


def fig_worker_rss_kib(ctx, p):
    gc.collect()
    ex = new_executor(ctx)
    try:
        pid = ex.submit(getpid_task, 0).result()
        assert pid in ex._processes
        rss = read_vmrss_kib(pid)
    finally:
        ex.shutdown(wait=True)
    return rss


FIGURE_FUNCS = {name: globals()["fig_" + name] for name in FIGURES}
DECIMALS = {"first_result_s": 6, "cpu_speedup": 3, "worker_rss_kib": 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start-method", choices=START_METHODS, default=None,
                    help="default: run all three")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds per figure; the median is reported (default 5)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--format", choices=["json", "lines"], default="json",
                    help="json (default), or one 'method figure value' line per figure")
    ap.add_argument("--only", default=None,
                    help="comma-separated figure names; available: " + ",".join(FIGURES))
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

    figures = FIGURES
    if args.only:
        figures = [f.strip() for f in args.only.split(",") if f.strip()]
        bad = [f for f in figures if f not in FIGURE_FUNCS]
        if bad:
            ap.error("unknown figure(s) %s; available: %s" % (bad, ", ".join(FIGURES)))
    methods = [args.start_method] if args.start_method else START_METHODS
    params = PARAMS_QUICK if args.quick else PARAMS_FULL

    log("cpython_bench: python %s, %d CPUs, rounds=%d, %s, params=%s"
        % (platform.python_version(), os.cpu_count(), args.rounds,
           "quick" if args.quick else "full", json.dumps(params)))
    wall0 = time.perf_counter()
    results = {}
    for method in methods:
        ctx = multiprocessing.get_context(method)
        res = {}
        # worker_rss_kib runs first: a forked worker's VmRSS includes pages
        # inherited from the parent, whose heap grows during the other figures
        # (measured: ~14 MiB when first vs ~43 MiB when last, for fork).
        order = sorted(figures, key=lambda f: f != "worker_rss_kib")
        for fig in order:
            vals = []
            for r in range(args.rounds):
                v = FIGURE_FUNCS[fig](ctx, params)
                vals.append(v)
                log("  [%s] %s round %d/%d: %.6g" % (method, fig, r + 1, args.rounds, v))
            med = statistics.median(vals)
            nd = DECIMALS.get(fig, 1)
            res[fig] = int(round(med)) if nd == 0 else round(med, nd)
            log("[%s] %s = %s" % (method, fig, res[fig]))
        results[method] = {f: res[f] for f in figures}
    log("cpython_bench: done in %.1f s" % (time.perf_counter() - wall0))

    if args.format == "lines":
        for method, res in results.items():
            for fig, value in res.items():
                print("%s %s %r" % (method, fig, value))
    else:
        print(json.dumps({"python": platform.python_version(), "results": results}))


if __name__ == "__main__":
    main()
