"""The scheduler's cost per job: the same tiny jobs sent directly to the nodes (JobCluster) and through
``dispyscheduler`` (SharedJobCluster), in one run on the same two nodes.

Run ``python bench/bench_scheduler.py [--jobs N] [--jobs-per-process N] [--quick]`` from the project
root. Everything runs on 127.0.0.1; the nodes and the scheduler are child processes stopped by PID at
the end. It prints a table (and the scheduler's cost per job: the difference of the two CPU-per-job
figures and of the two wall-clock-per-job figures); timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere without installing the project
    sys.path.insert(0, str(ROOT))

import dispy  # noqa: E402
from dispy_core.testing.nodes import NodeProcess, start_node  # noqa: E402
from dispy_core.testing.scheduler import SchedulerProcess, start_scheduler  # noqa: E402

SECRET = "bench-secret"


def double(x: int) -> int:
    """The tiny job."""
    return x * 2


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (the job processes, hosts)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for member in [proc, *proc.children(recursive=True)]:
                times = member.cpu_times()
                total += times.user + times.system + getattr(times, "children_user", 0.0) \
                    + getattr(times, "children_system", 0.0)
        except psutil.NoSuchProcess:
            continue
    return total


def run(cluster: Any, jobs: int) -> float:
    """Seconds to run ``jobs`` tiny jobs (all submitted at once), after one warm-up job."""
    warm = cluster.submit(0)
    if warm is None or warm(timeout=120) != 0:
        raise RuntimeError(f"warm-up job failed: {getattr(warm, 'exception', None)}")
    start = time.perf_counter()
    submitted = [cluster.submit(i) for i in range(jobs)]
    if not cluster.wait(timeout=600):
        raise RuntimeError("jobs did not finish within 600 s")
    elapsed = time.perf_counter() - start
    bad = [job for job in submitted if job is None or job.result != job.args[0] * 2]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs failed, e.g. {bad[0]!r}: {getattr(bad[0], 'exception', None)}")
    return elapsed


def measure(name: str, make: Any, jobs: int, pids: list[int]) -> dict[str, Any]:
    me = psutil.Process()
    cluster = make()
    try:
        before_client = sum(me.cpu_times()[:2])
        before_servers = cpu_seconds(pids)
        elapsed = run(cluster, jobs)
        client_cpu = sum(me.cpu_times()[:2]) - before_client
        server_cpu = cpu_seconds(pids) - before_servers
    finally:
        cluster.close()
    return {"name": name, "jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed,
            "wall_ms_per_job": 1000 * elapsed / jobs, "client_cpu_ms_per_job": 1000 * client_cpu / jobs,
            "servers_cpu_ms_per_job": 1000 * server_cpu / jobs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--jobs-per-process", type=int, default=1000,
                        help="job processes reused for this many jobs (1: a fresh process per job)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 jobs")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    jobs = 100 if args.quick else args.jobs
    prefix = Path(tempfile.mkdtemp(prefix="dispy-bench-scheduler-"))
    nodes: list[NodeProcess] = []
    scheduler: SchedulerProcess | None = None
    try:
        for name in ("n0", "n1", "sched"):
            (prefix / name).mkdir()
        nodes = [start_node(["--cpus", "1"], secret=SECRET, prefix=prefix / f"n{i}") for i in range(2)]
        scheduler = start_scheduler(nodes, cluster_secret=SECRET, node_secret=SECRET, prefix=prefix / "sched")
        sched = scheduler
        where = [dispy.NodeAllocate("127.0.0.1", port=node.port) for node in nodes]
        node_pids = [node.proc.pid for node in nodes]
        options = {"secret": SECRET, "jobs_per_process": args.jobs_per_process}
        rows = [
            measure("direct (JobCluster)", lambda: dispy.JobCluster(double, nodes=where, **options), jobs,
                    node_pids),
            measure("through dispyscheduler", lambda: dispy.SharedJobCluster(
                double, scheduler_node=sched.host, scheduler_port=sched.port, **options), jobs,
                [*node_pids, sched.proc.pid]),
        ]
    finally:
        if scheduler is not None:
            scheduler.stop()
        for node in nodes:
            node.stop()
    print(f"{jobs} tiny jobs, 2 one-CPU nodes on 127.0.0.1, jobs_per_process={args.jobs_per_process} "
          f"({os.cpu_count()} CPUs here)")
    print(f"{'':26}{'jobs/s':>10}{'ms/job':>10}{'client CPU ms/job':>20}{'nodes+sched CPU ms/job':>25}")
    for row in rows:
        print(f"{row['name']:26}{row['jobs_per_s']:>10.0f}{row['wall_ms_per_job']:>10.3f}"
              f"{row['client_cpu_ms_per_job']:>20.3f}{row['servers_cpu_ms_per_job']:>25.3f}")
    direct, shared = rows
    cost_cpu = shared["servers_cpu_ms_per_job"] - direct["servers_cpu_ms_per_job"]
    print(f"the scheduler's cost per job: {shared['wall_ms_per_job'] - direct['wall_ms_per_job']:+.3f} ms of "
          f"wall clock, {cost_cpu:+.3f} ms of CPU; throughput ratio {shared['jobs_per_s'] / direct['jobs_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
