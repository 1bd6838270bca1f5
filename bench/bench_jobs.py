"""Job throughput, latency and argument bandwidth: dispy on a local dispynode vs ProcessPoolExecutor(2),
and loky, Ray and Dask when they are installed.

Run ``python bench/bench_jobs.py [--jobs N] [--executor fork|spawn|fork,spawn] [--quick] [--many [N]]`` from
the project root. Everything runs on 127.0.0.1; the node is a child process stopped (by PID) at the end.
Results are printed as a table and written to ``bench/results/last.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere without installing the project
    sys.path.insert(0, str(ROOT))

from _libraries import OTHERS, Library, ProcessPool  # noqa: E402  (bench/, the script's directory)

import dispy  # noqa: E402
from dispy_core.testing.nodes import NodeProcess, start_node  # noqa: E402

MIB = 1 << 20
NODE_CPUS = 2
SECRET = "bench-secret"
WAIT_TIMEOUT = 1800.0
TARGETS = {"throughput_jobs_s": 1000.0, "latency_median_ms": 2.0, "big_mib_s": 300.0}
RATIO_TARGETS = {"reuse_throughput": 1.0, "reuse_latency": 2.0, "reuse_big": 1.5, "fresh_ceiling_share": 0.5,
                 "fresh_latency_ms": 1.0, "many_seconds": 1.2}
"""Issue 14's targets, as ratios to the baseline of the same run (and the fork ceiling it measures)."""
MANY_DEFAULT = 100_000


def double(x: int) -> int:
    """The tiny job."""
    return x * 2


def length(data: bytes) -> int:
    """The 1 MiB-argument job."""
    return len(data)


@dataclass
class Sizes:
    """How many jobs each phase runs."""

    jobs: int = 2000
    latency_jobs: int = 300
    big_jobs: int = 100
    big_bytes: int = MIB
    warmup: int = 20
    many: int = 0
    """Tiny jobs of the --many run (0: not run)."""
    many_memory: int = 10_000
    """Tiny jobs of the --many run's second pass, under tracemalloc, for the memory per held job (at most many)."""
    many_all: bool = False
    """The --many run also on dispy with a process per job, Ray and Dask (slow)."""
    standard: bool = True
    """The standard workloads (False with --many-only)."""


@dataclass
class Result:
    """What one contender (dispy with an executor, or the baseline) measured."""

    name: str
    throughput_jobs_s: float | None = None
    throughput_seconds: float | None = None
    latency_median_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_min_ms: float | None = None
    exec_median_ms: float | None = None
    big_mib_s: float | None = None
    big_seconds: float | None = None
    client_cpu_ms_per_job: float | None = None
    node_cpu_ms_per_job: float | None = None
    workers_cpu_ms_per_job: float | None = None
    many_seconds: float | None = None
    many_kib_per_job: float | None = None
    unavailable: str = ""
    """Why this contender was not measured (not installed), shown in the table."""
    errors: list[str] = field(default_factory=list)


# ====================================================================== helpers
def percentile(samples: list[float], pct: float) -> float:
    """The ``pct`` percentile (0..100) by linear interpolation between the closest ranks."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cpu_seconds(proc: psutil.Process, children: bool = False) -> float:
    """User + system CPU seconds of ``proc`` itself (or of its reaped children); 0 if it is gone."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return times.children_user + times.children_system if children else times.user + times.system


def tree_cpu(root: psutil.Process) -> dict[int, float]:
    """CPU seconds of every live descendant of ``root`` plus what each reaped, by PID (0: what root reaped)."""
    try:
        procs = root.children(recursive=True)
    except psutil.Error:
        procs = []
    tree = {p.pid: cpu_seconds(p) + cpu_seconds(p, children=True) for p in procs}
    tree[0] = cpu_seconds(root, children=True)
    return tree


def tree_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used by the descendants between two :func:`tree_cpu` snapshots (new ones count from 0)."""
    return sum(max(0.0, total - before.get(pid, 0.0)) for pid, total in after.items())


@contextmanager
def quiet_dispy() -> Iterator[None]:
    """Keep dispy's INFO logging off the table."""
    logger = logging.getLogger("dispy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def traced_kib_per_job(run: Callable[[int], Any], jobs: int) -> float:
    """KiB of Python memory still allocated, per job, while the program holds what ``run(jobs)`` returned
    (the jobs or futures, with their results), over what was allocated before it: traced by tracemalloc, so
    free heap left by earlier phases does not hide it, as it would from a resident-size difference."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = run(jobs)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del held
    return (after - before) / 1024 / jobs


# ====================================================================== dispy
class DispyContender:
    """dispy's JobCluster against one dispynode (``NODE_CPUS`` CPUs, the given executor) on loopback."""

    def __init__(self, executor: str, jobs_per_process: int = 1) -> None:
        self.executor = executor
        self.jobs_per_process = jobs_per_process
        self.name = f"dispy[{executor}]" if jobs_per_process == 1 else f"dispy[{executor},jpp={jobs_per_process}]"
        self.prefix = Path(tempfile.mkdtemp(prefix="dispy-bench-"))
        self.node: NodeProcess | None = None

    def start(self) -> NodeProcess:
        self.node = start_node(["-c", str(NODE_CPUS), "--executor", self.executor], secret=SECRET,
                               prefix=self.prefix)
        return self.node

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def cluster(self, compute: Callable[..., Any]) -> dispy.JobCluster:
        assert self.node is not None
        extra: dict[str, Any] = {"jobs_per_process": self.jobs_per_process} if self.jobs_per_process > 1 else {}
        return dispy.JobCluster(compute, nodes=["127.0.0.1"], host="127.0.0.1", dispy_port=self.node.base_port,
                                secret=SECRET, loglevel=logging.WARNING, **extra)

    def run(self, sizes: Sizes) -> Result:
        result = Result(self.name)
        node = self.start()
        with quiet_dispy():
            if sizes.standard:
                self._standard(sizes, result, psutil.Process(node.proc.pid))
            if sizes.many and (self.jobs_per_process > 1 or sizes.many_all):
                self._many(sizes, result)
        return result

    def _standard(self, sizes: Sizes, result: Result, node_proc: psutil.Process) -> None:
        cluster = self.cluster(double)
        try:
            _check(self._batch(cluster, list(range(sizes.warmup)), double), result, "warm-up")
            # (a) + (c): throughput of tiny jobs and what each costs in CPU
            progress(f"{result.name}: {sizes.jobs} tiny jobs")
            client0, node0, tree0 = time.process_time(), cpu_seconds(node_proc), tree_cpu(node_proc)
            start = time.perf_counter()
            jobs = [cluster.submit(i) for i in range(sizes.jobs)]
            done = cluster.wait(WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            client1, node1, tree1 = time.process_time(), cpu_seconds(node_proc), tree_cpu(node_proc)
            if not done:
                result.errors.append(f"tiny jobs not done after {WAIT_TIMEOUT} s")
            _check([_dispy_outcome(j, double(i)) for i, j in enumerate(jobs)], result, "tiny jobs")
            result.throughput_seconds = elapsed
            result.throughput_jobs_s = sizes.jobs / elapsed
            result.client_cpu_ms_per_job = (client1 - client0) * 1000 / sizes.jobs
            result.node_cpu_ms_per_job = (node1 - node0) * 1000 / sizes.jobs
            result.workers_cpu_ms_per_job = tree_delta(tree0, tree1) * 1000 / sizes.jobs
            # (a) latency, one job at a time
            progress(f"{result.name}: {sizes.latency_jobs} sequential jobs")
            lat: list[float] = []
            on_node: list[float] = []
            for i in range(sizes.latency_jobs):
                t0 = time.perf_counter()
                job = cluster.submit(i)
                value = job(timeout=WAIT_TIMEOUT) if job is not None else None
                lat.append(time.perf_counter() - t0)
                _check([_dispy_outcome(job, double(i), value)], result, "latency jobs")
                if job is not None and job.start_time and job.end_time:
                    on_node.append(job.end_time - job.start_time)
            _latency(result, lat)
            if on_node:
                result.exec_median_ms = statistics.median(on_node) * 1000
        finally:
            cluster.close(timeout=60, terminate=True)
        # (b) 1 MiB arguments
        progress(f"{result.name}: {sizes.big_jobs} jobs with {sizes.big_bytes} B arguments")
        cluster = self.cluster(length)
        try:
            payload = os.urandom(sizes.big_bytes)
            _check(self._batch(cluster, [payload] * 2, length), result, "big warm-up")
            start = time.perf_counter()
            jobs = [cluster.submit(payload) for _ in range(sizes.big_jobs)]
            done = cluster.wait(WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            if not done:
                result.errors.append(f"big jobs not done after {WAIT_TIMEOUT} s")
            _check([_dispy_outcome(j, sizes.big_bytes) for j in jobs], result, "big jobs")
            result.big_seconds = elapsed
            result.big_mib_s = sizes.big_jobs * sizes.big_bytes / MIB / elapsed
        finally:
            cluster.close(timeout=60, terminate=True)

    def _many(self, sizes: Sizes, result: Result) -> None:
        """(d) ``sizes.many`` tiny jobs submitted at once: the wall time; then, in a second pass under
        tracemalloc, the client's memory per job the program holds."""
        cluster = self.cluster(double)
        try:
            _check(self._batch(cluster, list(range(sizes.warmup)), double), result, "many warm-up")

            def run(jobs: int) -> list[dispy.DispyJob | None]:
                submitted = [cluster.submit(i) for i in range(jobs)]
                if not cluster.wait(WAIT_TIMEOUT):
                    result.errors.append(f"{jobs} tiny jobs not done after {WAIT_TIMEOUT} s")
                _check([_dispy_outcome(j, double(i)) for i, j in enumerate(submitted)], result, "many tiny jobs")
                return submitted

            progress(f"{result.name}: {sizes.many} tiny jobs")
            start = time.perf_counter()
            held = run(sizes.many)
            result.many_seconds = time.perf_counter() - start
            del held
            memory_jobs = min(sizes.many, sizes.many_memory)
            progress(f"{result.name}: {memory_jobs} tiny jobs under tracemalloc")
            result.many_kib_per_job = traced_kib_per_job(run, memory_jobs)
        finally:
            cluster.close(timeout=60, terminate=True)

    @staticmethod
    def _batch(cluster: dispy.JobCluster, args: list[Any], compute: Callable[..., Any]) -> list[str | None]:
        jobs = [cluster.submit(a) for a in args]
        cluster.wait(WAIT_TIMEOUT)
        return [_dispy_outcome(j, compute(a)) for a, j in zip(args, jobs, strict=True)]


def _dispy_outcome(job: dispy.DispyJob | None, expected: Any, value: Any = None) -> str | None:
    """None if ``job`` finished with ``expected``, else what went wrong."""
    if job is None:
        return "submit returned None"
    if job.status != dispy.DispyJob.Finished:
        return f"job {job.id} status {job.status}: {job.exception}"
    got = job.result if value is None else value
    if got != expected:
        return f"job {job.id} returned {got!r:.60}, expected {expected!r:.60}"
    return None


def _check(outcomes: list[str | None], result: Result, phase: str) -> None:
    bad = [o for o in outcomes if o is not None]
    if bad:
        result.errors.append(f"{phase}: {len(bad)} of {len(outcomes)} failed, first: {bad[0]}")


def _latency(result: Result, seconds: list[float]) -> None:
    result.latency_median_ms = statistics.median(seconds) * 1000
    result.latency_p99_ms = percentile(seconds, 99) * 1000
    result.latency_min_ms = min(seconds) * 1000


# ====================================================================== the pool and the other libraries
def run_library(lib: Library, sizes: Sizes) -> Result:
    """The same workloads on a futures-like library: the baseline (``ProcessPoolExecutor(2)``), loky, Ray, Dask."""
    result = Result(lib.name)
    missing = lib.missing()
    if missing:
        result.unavailable = missing
        return result
    progress(f"{lib.name}: starting")
    me = psutil.Process()
    lib.start()
    try:
        warm = max(sizes.warmup, NODE_CPUS)
        _check([_future_outcome(lib, h, double(i)) for i, h in enumerate([lib.submit(double, i) for i in range(warm)])],
               result, "warm-up")
        if sizes.standard:
            _standard_library(lib, sizes, result, me)
        if sizes.many and (isinstance(lib, ProcessPool) or sizes.many_all):
            _many_library(lib, sizes, result)
    finally:
        lib.stop()
    return result


def _standard_library(lib: Library, sizes: Sizes, result: Result, me: psutil.Process) -> None:
    progress(f"{result.name}: {sizes.jobs} tiny jobs")
    client0, tree0 = time.process_time(), tree_cpu(me)
    start = time.perf_counter()
    handles = [lib.submit(double, i) for i in range(sizes.jobs)]
    lib.wait(handles, WAIT_TIMEOUT)
    elapsed = time.perf_counter() - start
    client1, tree1 = time.process_time(), tree_cpu(me)
    _check([_future_outcome(lib, h, double(i)) for i, h in enumerate(handles)], result, "tiny jobs")
    result.throughput_seconds = elapsed
    result.throughput_jobs_s = sizes.jobs / elapsed
    result.client_cpu_ms_per_job = (client1 - client0) * 1000 / sizes.jobs
    result.workers_cpu_ms_per_job = tree_delta(tree0, tree1) * 1000 / sizes.jobs

    progress(f"{result.name}: {sizes.latency_jobs} sequential jobs")
    lat: list[float] = []
    for i in range(sizes.latency_jobs):
        t0 = time.perf_counter()
        handle = lib.submit(double, i)
        lib.result(handle, WAIT_TIMEOUT)
        lat.append(time.perf_counter() - t0)
        _check([_future_outcome(lib, handle, double(i))], result, "latency jobs")
    _latency(result, lat)

    progress(f"{result.name}: {sizes.big_jobs} jobs with {sizes.big_bytes} B arguments")
    payload = os.urandom(sizes.big_bytes)
    _check([_future_outcome(lib, lib.submit(length, payload), sizes.big_bytes)], result, "big warm-up")
    start = time.perf_counter()
    handles = [lib.submit(length, payload) for _ in range(sizes.big_jobs)]
    lib.wait(handles, WAIT_TIMEOUT)
    elapsed = time.perf_counter() - start
    _check([_future_outcome(lib, h, sizes.big_bytes) for h in handles], result, "big jobs")
    result.big_seconds = elapsed
    result.big_mib_s = sizes.big_jobs * sizes.big_bytes / MIB / elapsed


def _many_library(lib: Library, sizes: Sizes, result: Result) -> None:
    def run(jobs: int) -> list[Any]:
        handles = [lib.submit(double, i) for i in range(jobs)]
        lib.wait(handles, WAIT_TIMEOUT)
        _check([_future_outcome(lib, h, double(i)) for i, h in enumerate(handles)], result, "many tiny jobs")
        return handles

    progress(f"{result.name}: {sizes.many} tiny jobs")
    start = time.perf_counter()
    held = run(sizes.many)
    result.many_seconds = time.perf_counter() - start
    del held
    memory_jobs = min(sizes.many, sizes.many_memory)
    progress(f"{result.name}: {memory_jobs} tiny jobs under tracemalloc")
    result.many_kib_per_job = traced_kib_per_job(run, memory_jobs)


def _future_outcome(lib: Library, handle: Any, expected: Any) -> str | None:
    try:
        got = lib.result(handle, WAIT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"{type(exc).__name__}: {exc}"
    return None if got == expected else f"returned {got!r:.60}, expected {expected!r:.60}"


# ====================================================================== report
ROWS: list[tuple[str, str, str, bool]] = [
    # (label, Result attribute, format, higher is better)
    ("tiny jobs throughput (jobs/s)", "throughput_jobs_s", "{:.0f}", True),
    ("latency median (ms)", "latency_median_ms", "{:.3f}", False),
    ("latency p99 (ms)", "latency_p99_ms", "{:.3f}", False),
    ("latency min (ms)", "latency_min_ms", "{:.3f}", False),
    ("  of which on node, median (ms)", "exec_median_ms", "{:.3f}", False),
    ("1 MiB args (MiB/s)", "big_mib_s", "{:.1f}", True),
    ("client CPU per job (ms)", "client_cpu_ms_per_job", "{:.3f}", False),
    ("node process CPU per job (ms)", "node_cpu_ms_per_job", "{:.3f}", False),
    ("workers' CPU per job (ms)", "workers_cpu_ms_per_job", "{:.3f}", False),
]


def rows_for(sizes: Sizes) -> list[tuple[str, str, str, bool]]:
    """The table's rows: the standard ones, and those of the --many run when it was asked for."""
    rows = list(ROWS) if sizes.standard else []
    if sizes.many:
        rows += [(f"{sizes.many} tiny jobs, wall (s)", "many_seconds", "{:.1f}", False),
                 ("  client memory per held job (KiB)", "many_kib_per_job", "{:.2f}", False)]
    return rows


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(baseline: Result | None, contenders: list[Result], rows_spec: list[tuple[str, str, str, bool]]) -> str:
    """The side-by-side table; each contender's column is followed by its ratio to the baseline. A contender
    that could not be measured says why in its first cell."""
    header = ["metric"]
    if baseline is not None:
        header.append(baseline.name)
    for res in contenders:
        header.append(res.name)
        if baseline is not None:
            header.append("ratio")
    rows = [header]
    for index, (label, attr, fmt, _higher) in enumerate(rows_spec):
        row = [label]
        base = getattr(baseline, attr) if baseline is not None else None
        if baseline is not None:
            row.append(_fmt(base, fmt))
        for res in contenders:
            value = getattr(res, attr)
            row.append(res.unavailable.split(" (")[0] if res.unavailable and index == 0 else _fmt(value, fmt))
            if baseline is not None:
                row.append(f"{value / base:.2f}x" if value is not None and base else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def target_lines(contenders: list[Result]) -> list[str]:
    """One line per dispy contender: each target met or missed."""
    out = []
    for res in contenders:
        checks = [
            ("throughput", res.throughput_jobs_s, f">= {TARGETS['throughput_jobs_s']:.0f} jobs/s",
             lambda v: v >= TARGETS["throughput_jobs_s"], "{:.0f} jobs/s"),
            ("median latency", res.latency_median_ms, f"< {TARGETS['latency_median_ms']:g} ms",
             lambda v: v < TARGETS["latency_median_ms"], "{:.2f} ms"),
            ("1 MiB args", res.big_mib_s, f">= {TARGETS['big_mib_s']:.0f} MiB/s",
             lambda v: v >= TARGETS["big_mib_s"], "{:.0f} MiB/s"),
        ]
        parts = []
        for label, value, goal, ok, fmt in checks:
            verdict = "n/a" if value is None else ("MET" if ok(value) else "MISSED")
            parts.append(f"{label} {_fmt(value, fmt)} ({goal}: {verdict})")
        out.append(f"targets {res.name}: " + "; ".join(parts))
    return out


def ratio_target_lines(baseline: Result | None, contenders: list[Result], ceiling: dict[str, float]) -> list[str]:
    """Issue 14's targets per dispy contender: with reused job processes, ratios to the pool of this run; with a
    process per job, the share of the fork ceiling and the median latency."""
    out = []
    for res in contenders:
        parts: list[str] = []
        if "jpp=" in res.name:
            checks = [("tiny jobs", "throughput_jobs_s", ">=", RATIO_TARGETS["reuse_throughput"]),
                      ("median latency", "latency_median_ms", "<=", RATIO_TARGETS["reuse_latency"]),
                      ("1 MiB args", "big_mib_s", ">=", RATIO_TARGETS["reuse_big"]),
                      ("many tiny jobs' time", "many_seconds", "<=", RATIO_TARGETS["many_seconds"])]
            for label, attr, sense, goal in checks:
                value, base = getattr(res, attr), getattr(baseline, attr, None) if baseline is not None else None
                if value is None or not base:
                    continue
                ratio = value / base
                met = ratio >= goal if sense == ">=" else ratio <= goal
                parts.append(f"{label} {ratio:.2f}x the pool ({sense} {goal:g}x: {'MET' if met else 'MISSED'})")
        else:
            if res.throughput_jobs_s is not None and ceiling.get("max_jobs_s"):
                share = res.throughput_jobs_s / ceiling["max_jobs_s"]
                goal = RATIO_TARGETS["fresh_ceiling_share"]
                parts.append(f"tiny jobs {share:.2f} of the fork ceiling (>= {goal:g}: "
                             f"{'MET' if share >= goal else 'MISSED'})")
            if res.latency_median_ms is not None:
                goal = RATIO_TARGETS["fresh_latency_ms"]
                parts.append(f"median latency {res.latency_median_ms:.2f} ms (< {goal:g} ms: "
                             f"{'MET' if res.latency_median_ms < goal else 'MISSED'})")
        if parts:
            out.append(f"issue 14 targets {res.name}: " + "; ".join(parts))
    return out


def fork_ceiling(forks: int = 300) -> dict[str, float]:
    """What one fork + exit + reap costs here, in a process that has imported what a job host has.

    Each job runs in its own process, so this bounds the fork executor's tiny-job rate on this machine
    whatever dispy does: with ``cpus`` cores, at most cpus / (cpu per fork) jobs per second.
    """
    code = (
        "import gc, os, resource, sys, time\n"
        "import dispy_plugins.executor_host.host, dispy_plugins.serializer_pickle.serializer\n"
        "gc.freeze()\n"
        f"n = {forks}\n"
        "r0 = resource.getrusage(resource.RUSAGE_CHILDREN); c0 = time.process_time(); t0 = time.perf_counter()\n"
        "for _ in range(n):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "wall = time.perf_counter() - t0; parent = time.process_time() - c0\n"
        "r1 = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "child = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)\n"
        "print(wall / n * 1e3, parent / n * 1e3, child / n * 1e3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    wall_ms, parent_ms, child_ms = (float(v) for v in out.stdout.split())
    cpu_ms = parent_ms + child_ms
    return {"wall_ms": wall_ms, "parent_cpu_ms": parent_ms, "child_cpu_ms": child_ms, "cpu_ms": cpu_ms,
            "max_jobs_s": (os.cpu_count() or 1) * 1000.0 / cpu_ms if cpu_ms > 0 else 0.0}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    freq = psutil.cpu_freq()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_mhz": round(freq.current) if freq else None,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "dispy_version": dispy.__version__,
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ====================================================================== main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=None, help="tiny jobs for throughput (default 2000)")
    parser.add_argument("--latency-jobs", type=int, default=None, help="sequential jobs for latency (default 300)")
    parser.add_argument("--big-jobs", type=int, default=None, help="jobs with a 1 MiB argument (default 100)")
    parser.add_argument("--executor", default="fork" if os.name == "posix" else "spawn",
                        help="dispynode executor(s): fork, spawn or a comma list such as fork,spawn")
    parser.add_argument("--jobs-per-process", default="1,1000",
                        help="JobCluster jobs_per_process value(s) to measure, a comma list (default 1,1000: "
                             "a fresh process per job, the default, and reused job processes)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run")
    parser.add_argument("--no-baseline", action="store_true", help="skip ProcessPoolExecutor")
    parser.add_argument("--others", default=None,
                        help=f"other libraries to measure, a comma list of {', '.join(OTHERS)} or 'none' (default: "
                             f"all of them, each when installed; with --quick: loky)")
    parser.add_argument("--many", type=int, nargs="?", const=MANY_DEFAULT, default=0, metavar="N",
                        help=f"also run N tiny jobs at once (default N: {MANY_DEFAULT}) on the pool, loky and dispy "
                             f"with reused job processes: wall time and the client's memory per job it holds")
    parser.add_argument("--many-only", action="store_true", help="only the --many run (implies --many)")
    parser.add_argument("--many-all", action="store_true",
                        help="the --many run also on dispy with a process per job, Ray and Dask (minutes)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "last.json", help="where to write results")
    args = parser.parse_args(argv)
    if any(n is not None and n < 1 for n in (args.jobs, args.latency_jobs, args.big_jobs)):
        parser.error("job counts must be at least 1")
    try:
        args.jpp = [int(v) for v in args.jobs_per_process.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--jobs-per-process takes integers, not {args.jobs_per_process!r}")
    if not args.jpp or min(args.jpp) < 1:
        parser.error("--jobs-per-process values must be at least 1")
    if args.many < 0:
        parser.error("--many takes a number of jobs of at least 1")
    if (args.many_only or args.many_all) and not args.many:
        args.many = MANY_DEFAULT
    others = args.others if args.others is not None else ("loky" if args.quick else ",".join(OTHERS))
    args.other_names = [] if others.strip() == "none" else [o.strip() for o in others.split(",") if o.strip()]
    unknown = [o for o in args.other_names if o not in OTHERS]
    if unknown:
        parser.error(f"--others: unknown {', '.join(unknown)}; known: {', '.join(OTHERS)} (or 'none')")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = Sizes(jobs=50, latency_jobs=20, big_jobs=5, warmup=4) if args.quick else Sizes()
    sizes.jobs = args.jobs or sizes.jobs
    sizes.latency_jobs = args.latency_jobs or sizes.latency_jobs
    sizes.big_jobs = args.big_jobs or sizes.big_jobs
    sizes.many = args.many
    sizes.many_all = args.many_all
    sizes.standard = not args.many_only
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args)
    executors = [e.strip() for e in args.executor.split(",") if e.strip()]
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']} "
          f"({info['implementation']}), {info['platform']}; dispy {info['dispy_version']}")
    workloads = [f"{sizes.jobs} tiny jobs, {sizes.latency_jobs} sequential jobs, {sizes.big_jobs} x "
                 f"{sizes.big_bytes // 1024} KiB args"] if sizes.standard else []
    if sizes.many:
        workloads.append(f"{sizes.many} tiny jobs at once (memory: {min(sizes.many, sizes.many_memory)})")
    print(f"sizes: {'; '.join(workloads)}; node: {NODE_CPUS} CPUs on 127.0.0.1; executors: {', '.join(executors)}; "
          f"jobs_per_process: {', '.join(map(str, args.jpp))}; others: {', '.join(args.other_names) or 'none'}")
    sys.stdout.flush()

    baseline: Result | None = None
    if not args.no_baseline:
        baseline = _run_safely(ProcessPool(), sizes)
    contenders: list[Result] = []
    for executor in executors:
        for jpp in args.jpp:
            if not sizes.standard and jpp == 1 and not sizes.many_all:
                continue  # --many-only runs a process per job only with --many-all
            contender = DispyContender(executor, jpp)
            try:
                contenders.append(contender.run(sizes))
            except Exception as exc:  # noqa: BLE001 - reported in the output
                traceback.print_exc()
                log_tail = contender.node.log()[-2000:] if contender.node is not None else ""
                contenders.append(Result(contender.name, errors=[f"crashed: {exc!r}", log_tail]))
            finally:
                contender.stop()
    others = [_run_safely(OTHERS[name](), sizes) for name in args.other_names]

    ceiling = fork_ceiling(60 if args.quick else 300)
    print()
    print(table(baseline, contenders + others, rows_for(sizes)))
    print()
    for res in others:
        if res.unavailable:
            print(f"{res.name}: {res.unavailable}")
    for line in target_lines(contenders) if sizes.standard else []:
        print(line)
    for line in ratio_target_lines(baseline, contenders, ceiling):
        print(line)
    print(f"fork ceiling on this machine: one fork+exit+reap of a job-host-sized process costs "
          f"{ceiling['cpu_ms']:.2f} ms CPU ({ceiling['parent_cpu_ms']:.2f} parent + {ceiling['child_cpu_ms']:.2f} "
          f"child), so one process per job cannot exceed ~{ceiling['max_jobs_s']:.0f} jobs/s on "
          f"{os.cpu_count()} CPUs even with zero other work")
    if baseline is not None:
        print("ratios are contender / baseline: above 1x is better for jobs/s and MiB/s, worse for s, ms and KiB")
    failures = [(r.name, e) for r in ([baseline] if baseline else []) + contenders + others for e in r.errors]
    for name, error in failures:
        print(f"ERROR {name}: {error}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": info,
        "sizes": asdict(sizes),
        "node_cpus": NODE_CPUS,
        "targets": TARGETS,
        "ratio_targets": RATIO_TARGETS,
        "baseline": asdict(baseline) if baseline else None,
        "dispy": [asdict(r) for r in contenders],
        "others": [asdict(r) for r in others],
        "fork_ceiling": ceiling,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if failures else 0


def _run_safely(lib: Library, sizes: Sizes) -> Result:
    """``run_library``, with a crash reported in the table instead of ending the run."""
    try:
        return run_library(lib, sizes)
    except Exception as exc:  # noqa: BLE001 - reported in the output
        traceback.print_exc()
        return Result(lib.name, errors=[f"crashed: {exc!r}"])


if __name__ == "__main__":
    sys.exit(main())
