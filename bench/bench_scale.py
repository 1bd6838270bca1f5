"""Scheduling cost vs number of nodes: the client's CPU per tiny job with 1, 16, 64, 128 and 256 one-CPU nodes.

Run ``python bench/bench_scale.py [--nodes 1,16,64,128,256] [--real 4] [--jobs N] [--quick]`` from the project
root. A machine with a few cores cannot hold 256 ``dispynode`` processes, so each row uses up to ``--real`` real
one-CPU nodes (with reused job processes, ``jobs_per_process``) and simulated nodes for the rest: all of them live
in one child process (``dispy_core.testing.simnode``), each a real TCP listener on 127.0.0.1 that speaks the
protocol and answers every job at once, so what grows with the node count is the client's own work. A second
series uses simulated nodes only (the same kind of node in every row). Everything runs on 127.0.0.1; the child
processes are stopped by PID at the end. Timings are printed, never asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
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
from dispy_core.testing.simnode import SimNodeProcess, start_simulated_nodes  # noqa: E402

SECRET = "bench-scale-secret"
WAIT_TIMEOUT = 600.0
READY_TIMEOUT = 120.0
TARGET_RATIO = 1.2
"""Issue 14: the client's CPU per job with the most nodes at most this many times that with 1 node."""
SERIES = ("mixed", "simulated")


def double(x: int) -> int:
    """The tiny job."""
    return x * 2


@dataclass
class Row:
    """One cluster of ``nodes`` one-CPU nodes (``real`` of them dispynode processes) and what its jobs cost."""

    series: str
    nodes: int
    real: int
    simulated: int
    jobs: int
    setup_seconds: float | None = None
    seconds: float | None = None
    jobs_per_s: float | None = None
    client_cpu_ms_per_job: float | None = None
    nodes_cpu_ms_per_job: float | None = None
    """CPU of the nodes (the simulated nodes' process and the real nodes with their job processes) per job."""
    ratio_to_one: float | None = None
    errors: list[str] = field(default_factory=list)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes, their live descendants, and the children they reaped."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            members = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


class Nodes:
    """The real dispynode processes and the simulated nodes every row takes its nodes from."""

    def __init__(self, real: int, simulated: int, jobs_per_process: int, answer: str) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="dispy-bench-scale-"))
        self.real: list[NodeProcess] = []
        self.sim: SimNodeProcess | None = None
        self.jobs_per_process = jobs_per_process
        self.checked = answer == "apply"  # "none": simulated nodes answer None, so only the status is checked
        try:
            for i in range(real):
                progress(f"starting real dispynode {i + 1} of {real}")
                (self.prefix / f"n{i}").mkdir()
                self.real.append(start_node(["--cpus", "1"], secret=SECRET, prefix=self.prefix / f"n{i}"))
            if simulated:
                progress(f"starting {simulated} simulated nodes")
                self.sim = start_simulated_nodes(simulated, cpus=1, secret=SECRET, answer=answer)
        except BaseException:
            self.stop()
            raise

    def allocation(self, real: int, simulated: int) -> list[dispy.NodeAllocate]:
        where = [dispy.NodeAllocate(node.host, port=node.port) for node in self.real[:real]]
        if simulated:
            assert self.sim is not None and len(self.sim.ports) >= simulated
            where += [dispy.NodeAllocate(self.sim.host, port=port) for port in self.sim.ports[:simulated]]
        return where

    def pids(self) -> list[int]:
        return [node.proc.pid for node in self.real] + ([self.sim.proc.pid] if self.sim is not None else [])

    def stop(self) -> None:
        for node in self.real:
            node.stop()
        if self.sim is not None:
            self.sim.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


def measure(nodes: Nodes, row: Row) -> None:
    """Set up a cluster on the row's nodes, warm it up, then time ``row.jobs`` tiny jobs submitted at once."""
    where = nodes.allocation(row.real, row.simulated)
    start = time.perf_counter()
    cluster = dispy.JobCluster(double, nodes=where, secret=SECRET, host="127.0.0.1", loglevel=logging.WARNING,
                               jobs_per_process=nodes.jobs_per_process)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(cluster.status()["nodes"]) < row.nodes:
            if time.monotonic() > deadline:
                status = cluster.status()
                raise RuntimeError(f"{len(status['nodes'])} of {row.nodes} nodes ready after {READY_TIMEOUT} s; "
                                   f"failed: {dict(list(status['failed_nodes'].items())[:3])}")
            time.sleep(0.05)
        row.setup_seconds = time.perf_counter() - start
        warm = [cluster.submit(i) for i in range(2 * row.nodes)]  # every node's job process started
        cluster.wait(WAIT_TIMEOUT)
        _check(warm, row, "warm-up", nodes.checked)
        progress(f"{row.series}: {row.jobs} tiny jobs on {row.nodes} nodes ({row.real} real)")
        servers0, client0 = tree_cpu_seconds(nodes.pids()), time.process_time()
        start = time.perf_counter()
        jobs = [cluster.submit(i) for i in range(row.jobs)]
        done = cluster.wait(WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        client1, servers1 = time.process_time(), tree_cpu_seconds(nodes.pids())
        if not done:
            row.errors.append(f"jobs not done after {WAIT_TIMEOUT} s")
        _check(jobs, row, "jobs", nodes.checked)
        row.seconds = elapsed
        row.jobs_per_s = row.jobs / elapsed
        row.client_cpu_ms_per_job = (client1 - client0) * 1000 / row.jobs
        row.nodes_cpu_ms_per_job = (servers1 - servers0) * 1000 / row.jobs
    finally:
        cluster.close(timeout=120, terminate=True)


def _check(jobs: list[Any], row: Row, phase: str, values: bool) -> None:
    bad = [(i, job) for i, job in enumerate(jobs)
           if job is None or job.status != dispy.DispyJob.Finished or (values and job.result != 2 * i)]
    if bad:
        i, job = bad[0]
        row.errors.append(f"{phase}: {len(bad)} of {len(jobs)} failed, first: job {i} "
                          f"{getattr(job, 'status', None)} {getattr(job, 'exception', None)!r:.200}")


def table(rows: list[Row]) -> str:
    header = ["series", "nodes", "real", "simulated", "jobs", "setup (s)", "jobs/s", "client CPU ms/job",
              "vs 1 node", "nodes' CPU ms/job"]
    cells = [header]
    for row in rows:
        cells.append([row.series, str(row.nodes), str(row.real), str(row.simulated), str(row.jobs),
                      _fmt(row.setup_seconds, "{:.1f}"), _fmt(row.jobs_per_s, "{:.0f}"),
                      _fmt(row.client_cpu_ms_per_job, "{:.3f}"), _fmt(row.ratio_to_one, "{:.2f}x"),
                      _fmt(row.nodes_cpu_ms_per_job, "{:.3f}")])
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", default=None, help="node counts, a comma list (default 1,16,64,128,256)")
    parser.add_argument("--real", type=int, default=None,
                        help="real one-CPU dispynode processes at most per row, the rest simulated (default 4)")
    parser.add_argument("--jobs", type=int, default=None, help="tiny jobs per row (default 10000)")
    parser.add_argument("--jobs-per-process", type=int, default=1000,
                        help="JobCluster jobs_per_process on the real nodes (default 1000: reused job processes)")
    parser.add_argument("--series", default=",".join(SERIES),
                        help="mixed (real nodes first, simulated for the rest), simulated (simulated only), or both "
                             "(default mixed,simulated)")
    parser.add_argument("--answer", choices=("apply", "none"), default="apply",
                        help="what simulated nodes answer: the function applied to the arguments (checked), or None")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 8 nodes, 1 real, 300 jobs")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "scale.json", help="where to write results")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(v) for v in (args.nodes or ("1,8" if args.quick else "1,16,64,128,256")).split(",")
                              if v.strip()})
    except ValueError:
        parser.error(f"--nodes takes integers, not {args.nodes!r}")
    if not args.counts or args.counts[0] < 1:
        parser.error("--nodes values must be at least 1")
    args.real = args.real if args.real is not None else (1 if args.quick else 4)
    args.jobs = args.jobs or (300 if args.quick else 10_000)
    if args.real < 0 or args.jobs < 1 or args.jobs_per_process < 1:
        parser.error("--real must be 0 or more, --jobs and --jobs-per-process at least 1")
    args.series_names = [s.strip() for s in args.series.split(",") if s.strip()]
    if not args.series_names or any(s not in SERIES for s in args.series_names):
        parser.error(f"--series takes {', '.join(SERIES)} (a comma list), not {args.series!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    most = args.counts[-1]
    real = min(args.real, most) if "mixed" in args.series_names else 0
    simulated = most if "simulated" in args.series_names else most - real
    print(f"machine: {os.cpu_count()} CPUs, {round(psutil.virtual_memory().total / (1 << 30))} GiB; node counts: "
          f"{', '.join(map(str, args.counts))}; up to {real} real dispynode processes (--cpus 1, jobs_per_process "
          f"{args.jobs_per_process}), the rest simulated (answer: {args.answer}); {args.jobs} tiny jobs per row")
    sys.stdout.flush()
    rows: list[Row] = []
    nodes = Nodes(real, simulated, args.jobs_per_process, args.answer)
    try:
        for series in args.series_names:
            for count in args.counts:
                use_real = min(real, count) if series == "mixed" else 0
                row = Row(series, count, use_real, count - use_real, args.jobs)
                try:
                    measure(nodes, row)
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    traceback.print_exc()
                    row.errors.append(f"crashed: {exc!r}")
                rows.append(row)
    finally:
        nodes.stop()
    for series in args.series_names:
        own = [r for r in rows if r.series == series]
        one = next((r.client_cpu_ms_per_job for r in own if r.nodes == 1), None)
        for row in own:
            if one and row.client_cpu_ms_per_job is not None:
                row.ratio_to_one = row.client_cpu_ms_per_job / one
    print()
    print(table(rows))
    print()
    for series in args.series_names:
        own = [r for r in rows if r.series == series and r.ratio_to_one is not None]
        if own and own[-1].nodes > 1:
            last = own[-1]
            verdict = "MET" if last.ratio_to_one is not None and last.ratio_to_one <= TARGET_RATIO else "MISSED"
            print(f"issue 14 target ({series}): client CPU per job with {last.nodes} nodes {last.ratio_to_one:.2f}x "
                  f"that with 1 node (<= {TARGET_RATIO:g}x: {verdict})")
    print("client CPU: time.process_time() of this process (every thread) over the timed jobs / jobs; "
          "nodes' CPU: the simulated nodes' process and the real nodes with their job processes")
    failures = [(f"{r.series} {r.nodes} nodes", e) for r in rows for e in r.errors]
    for name, error in failures:
        print(f"ERROR {name}: {error}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv, "cpu_count": os.cpu_count(),
        "target_ratio": TARGET_RATIO, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
