"""The client half of bench_upstream.py, run by the upstream venv's Python: prints one JSON line.

``python _upstream_client.py BASE_PORT SECRET JOBS LATENCY_JOBS BIG_JOBS NODE_PID``; the node must already run.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from typing import Any

import _loopback_guard  # noqa: F401  (patches socket.socket: loopback only)
import psutil

import dispy  # upstream dispy 4.15.2

MIB = 1 << 20


def double(x: int) -> int:
    """The tiny job."""
    return x * 2


def length(data: bytes) -> int:
    """The 1 MiB-argument job."""
    return len(data)


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * pct / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cpu(proc: psutil.Process) -> tuple[float, dict[int, float]]:
    """The node's own CPU seconds, and its descendants' (live ones plus what they reaped) by PID."""
    own = proc.cpu_times()
    tree = {}
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        tree[child.pid] = t.user + t.system + t.children_user + t.children_system
    tree[0] = own.children_user + own.children_system
    return own.user + own.system, tree


def cluster(compute: Any, base: int, secret: str) -> Any:
    return dispy.JobCluster(compute, nodes=["127.0.0.1"], host="127.0.0.1", dispy_port=base, secret=secret,
                            loglevel=logging.WARNING)


def bad(jobs: list[Any], expected: list[Any]) -> list[str]:
    out = []
    for job, want in zip(jobs, expected, strict=True):
        if job.status != dispy.DispyJob.Finished or job.result != want:
            out.append(f"job {job.id} status {job.status} result {job.result!r:.60} exc {job.exception!r:.200}")
    return out


def main() -> None:
    base, secret = int(sys.argv[1]), sys.argv[2]
    jobs_n, lat_n, big_n = (int(a) for a in sys.argv[3:6])
    node = psutil.Process(int(sys.argv[6]))
    res: dict[str, Any] = {"errors": []}
    c = cluster(double, base, secret)
    try:
        warm = [c.submit(i) for i in range(20)]
        c.wait()
        res["errors"] += bad(warm, [i * 2 for i in range(20)])[:1]
        (node0, tree0), cpu0, t0 = cpu(node), time.process_time(), time.perf_counter()
        jobs = [c.submit(i) for i in range(jobs_n)]
        c.wait()
        elapsed = time.perf_counter() - t0
        res["client_cpu_ms_per_job"] = (time.process_time() - cpu0) * 1000 / jobs_n
        node1, tree1 = cpu(node)
        res["node_cpu_ms_per_job"] = (node1 - node0) * 1000 / jobs_n
        workers = sum(max(0.0, v - tree0.get(pid, 0.0)) for pid, v in tree1.items())
        res["workers_cpu_ms_per_job"] = workers * 1000 / jobs_n
        res["throughput_seconds"] = elapsed
        res["throughput_jobs_s"] = jobs_n / elapsed
        res["errors"] += bad(jobs, [i * 2 for i in range(jobs_n)])[:1]
        lat: list[float] = []
        for i in range(lat_n):
            t0 = time.perf_counter()
            job = c.submit(i)
            job()
            lat.append(time.perf_counter() - t0)
            res["errors"] += bad([job], [i * 2])[:1]
        res["latency_median_ms"] = statistics.median(lat) * 1000
        res["latency_p99_ms"] = percentile(lat, 99) * 1000
        res["latency_min_ms"] = min(lat) * 1000
    finally:
        c.close()
    c = cluster(length, base, secret)
    try:
        payload = os.urandom(MIB)
        warm = [c.submit(payload)]
        c.wait()
        t0 = time.perf_counter()
        jobs = [c.submit(payload) for _ in range(big_n)]
        c.wait()
        elapsed = time.perf_counter() - t0
        res["big_seconds"] = elapsed
        res["big_mib_s"] = big_n / elapsed
        res["errors"] += bad(warm + jobs, [MIB] * (big_n + 1))[:1]
    finally:
        c.close()
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
