"""Job throughput, latency and argument bandwidth: dispy on a local dispynode vs ProcessPoolExecutor(2).

Run ``python bench/bench_jobs.py [--jobs N] [--executor fork|spawn|fork,spawn] [--quick]`` from the
project root. Everything runs on 127.0.0.1; the node is a child process stopped (by PID) at the end.
Results are printed as a table and written to ``bench/results/last.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
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

import dispy  # noqa: E402
from dispy_core.testing.nodes import NodeProcess, start_node  # noqa: E402

MIB = 1 << 20
NODE_CPUS = 2
SECRET = "bench-secret"
WAIT_TIMEOUT = 1800.0
TARGETS = {"throughput_jobs_s": 1000.0, "latency_median_ms": 2.0, "big_mib_s": 300.0}


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
        extra = {"jobs_per_process": self.jobs_per_process} if self.jobs_per_process > 1 else {}
        return dispy.JobCluster(compute, nodes=["127.0.0.1"], host="127.0.0.1", dispy_port=self.node.base_port,
                                secret=SECRET, loglevel=logging.WARNING, **extra)

    def run(self, sizes: Sizes) -> Result:
        result = Result(self.name)
        node = self.start()
        node_proc = psutil.Process(node.proc.pid)
        with quiet_dispy():
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
        return result

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


# ====================================================================== baseline
def run_baseline(sizes: Sizes) -> Result:
    """The same workloads on ``concurrent.futures.ProcessPoolExecutor(NODE_CPUS)``."""
    result = Result(f"ProcessPool({NODE_CPUS})")
    me = psutil.Process()
    with concurrent.futures.ProcessPoolExecutor(NODE_CPUS) as pool:
        _check([_future_outcome(f, double(i)) for i, f in
                enumerate([pool.submit(double, i) for i in range(max(sizes.warmup, NODE_CPUS))])], result, "warm-up")
        progress(f"{result.name}: {sizes.jobs} tiny jobs")
        client0, tree0 = time.process_time(), tree_cpu(me)
        start = time.perf_counter()
        futures = [pool.submit(double, i) for i in range(sizes.jobs)]
        concurrent.futures.wait(futures, WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        client1, tree1 = time.process_time(), tree_cpu(me)
        _check([_future_outcome(f, double(i)) for i, f in enumerate(futures)], result, "tiny jobs")
        result.throughput_seconds = elapsed
        result.throughput_jobs_s = sizes.jobs / elapsed
        result.client_cpu_ms_per_job = (client1 - client0) * 1000 / sizes.jobs
        result.workers_cpu_ms_per_job = tree_delta(tree0, tree1) * 1000 / sizes.jobs

        progress(f"{result.name}: {sizes.latency_jobs} sequential jobs")
        lat: list[float] = []
        for i in range(sizes.latency_jobs):
            t0 = time.perf_counter()
            future = pool.submit(double, i)
            future.result(WAIT_TIMEOUT)
            lat.append(time.perf_counter() - t0)
            _check([_future_outcome(future, double(i))], result, "latency jobs")
        _latency(result, lat)

        progress(f"{result.name}: {sizes.big_jobs} jobs with {sizes.big_bytes} B arguments")
        payload = os.urandom(sizes.big_bytes)
        _check([_future_outcome(pool.submit(length, payload), sizes.big_bytes)], result, "big warm-up")
        start = time.perf_counter()
        futures = [pool.submit(length, payload) for _ in range(sizes.big_jobs)]
        concurrent.futures.wait(futures, WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        _check([_future_outcome(f, sizes.big_bytes) for f in futures], result, "big jobs")
        result.big_seconds = elapsed
        result.big_mib_s = sizes.big_jobs * sizes.big_bytes / MIB / elapsed
    return result


def _future_outcome(future: concurrent.futures.Future[Any], expected: Any) -> str | None:
    try:
        got = future.result(WAIT_TIMEOUT)
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


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(baseline: Result | None, contenders: list[Result]) -> str:
    """The side-by-side table; each dispy column is followed by its ratio to the baseline."""
    header = ["metric"]
    if baseline is not None:
        header.append(baseline.name)
    for res in contenders:
        header.append(res.name)
        if baseline is not None:
            header.append("ratio")
    rows = [header]
    for label, attr, fmt, _higher in ROWS:
        row = [label]
        base = getattr(baseline, attr) if baseline is not None else None
        if baseline is not None:
            row.append(_fmt(base, fmt))
        for res in contenders:
            value = getattr(res, attr)
            row.append(_fmt(value, fmt))
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
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = Sizes(jobs=50, latency_jobs=20, big_jobs=5, warmup=4) if args.quick else Sizes()
    sizes.jobs = args.jobs or sizes.jobs
    sizes.latency_jobs = args.latency_jobs or sizes.latency_jobs
    sizes.big_jobs = args.big_jobs or sizes.big_jobs
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args)
    executors = [e.strip() for e in args.executor.split(",") if e.strip()]
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']} "
          f"({info['implementation']}), {info['platform']}; dispy {info['dispy_version']}")
    print(f"sizes: {sizes.jobs} tiny jobs, {sizes.latency_jobs} sequential jobs, {sizes.big_jobs} x "
          f"{sizes.big_bytes // 1024} KiB args; node: {NODE_CPUS} CPUs on 127.0.0.1; "
          f"executors: {', '.join(executors)}; jobs_per_process: {', '.join(map(str, args.jpp))}")
    sys.stdout.flush()

    baseline: Result | None = None
    if not args.no_baseline:
        try:
            baseline = run_baseline(sizes)
        except Exception as exc:  # noqa: BLE001 - reported in the output
            baseline = Result(f"ProcessPool({NODE_CPUS})", errors=[f"crashed: {exc!r}"])
            traceback.print_exc()
    contenders: list[Result] = []
    for executor in executors:
        for jpp in args.jpp:
            contender = DispyContender(executor, jpp)
            try:
                contenders.append(contender.run(sizes))
            except Exception as exc:  # noqa: BLE001 - reported in the output
                traceback.print_exc()
                log_tail = contender.node.log()[-2000:] if contender.node is not None else ""
                contenders.append(Result(contender.name, errors=[f"crashed: {exc!r}", log_tail]))
            finally:
                contender.stop()

    ceiling = fork_ceiling(60 if args.quick else 300)
    print()
    print(table(baseline, contenders))
    print()
    for line in target_lines(contenders):
        print(line)
    print(f"fork ceiling on this machine: one fork+exit+reap of a job-host-sized process costs "
          f"{ceiling['cpu_ms']:.2f} ms CPU ({ceiling['parent_cpu_ms']:.2f} parent + {ceiling['child_cpu_ms']:.2f} "
          f"child), so one process per job cannot exceed ~{ceiling['max_jobs_s']:.0f} jobs/s on "
          f"{os.cpu_count()} CPUs even with zero other work")
    if baseline is not None:
        print("ratios are dispy / baseline: above 1x is better for jobs/s and MiB/s, worse for ms")
    failures = [(r.name, e) for r in ([baseline] if baseline else []) + contenders for e in r.errors]
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
        "baseline": asdict(baseline) if baseline else None,
        "dispy": [asdict(r) for r in contenders],
        "fork_ceiling": ceiling,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
