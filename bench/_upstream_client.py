"""The client half of bench_upstream.py, run by the upstream venv's Python: one phase, one JSON line.

``python _upstream_client.py BASE_PORT SECRET PHASE COUNT NODE_PID TIMEOUT`` with PHASE ``tiny`` (throughput
and CPU), ``latency`` (sequential jobs) or ``big`` (1 MiB arguments); the node must already run. It prints
``RESULT {json}``; if jobs are not done within TIMEOUT seconds it says so and exits at once with 3 (closing
the cluster would wait forever).
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
WARMUP = 20


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


def report(res: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(res), flush=True)


def finish(jobs: list[Any], expected: list[Any], timeout: float, res: dict[str, Any], phase: str) -> None:
    """Wait for ``jobs`` and check them; on timeout report and leave without the (hanging) close."""
    deadline = time.monotonic() + timeout
    for job in jobs:
        if not job.finish.wait(max(0.0, deadline - time.monotonic())):
            done = sum(1 for j in jobs if j.finish.is_set())
            res["errors"].append(f"{phase}: only {done} of {len(jobs)} jobs done after {timeout:.0f} s")
            report(res)
            os._exit(3)
    bad = [job for job, want in zip(jobs, expected, strict=True)
           if job.status != dispy.DispyJob.Finished or job.result != want]
    if bad:
        res["errors"].append(f"{phase}: {len(bad)} of {len(jobs)} jobs failed; first: job {bad[0].id} status "
                             f"{bad[0].status} exception {bad[0].exception!r:.300}")


def main() -> None:
    base, secret, phase = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    count, node, timeout = int(sys.argv[4]), psutil.Process(int(sys.argv[5])), float(sys.argv[6])
    res: dict[str, Any] = {"errors": []}
    compute = length if phase == "big" else double
    c = dispy.JobCluster(compute, nodes=["127.0.0.1"], host="127.0.0.1", dispy_port=base, secret=secret,
                         loglevel=logging.WARNING)
    if phase == "tiny":
        warm = [c.submit(i) for i in range(WARMUP)]
        finish(warm, [i * 2 for i in range(WARMUP)], timeout, res, "warm-up")
        (node0, tree0), cpu0, t0 = cpu(node), time.process_time(), time.perf_counter()
        jobs = [c.submit(i) for i in range(count)]
        finish(jobs, [i * 2 for i in range(count)], timeout, res, "tiny jobs")
        elapsed = time.perf_counter() - t0
        res["client_cpu_ms_per_job"] = (time.process_time() - cpu0) * 1000 / count
        node1, tree1 = cpu(node)
        res["node_cpu_ms_per_job"] = (node1 - node0) * 1000 / count
        res["workers_cpu_ms_per_job"] = sum(max(0.0, v - tree0.get(pid, 0.0))
                                            for pid, v in tree1.items()) * 1000 / count
        res["throughput_seconds"] = elapsed
        res["throughput_jobs_s"] = count / elapsed
    elif phase == "latency":
        warm = [c.submit(i) for i in range(WARMUP)]
        finish(warm, [i * 2 for i in range(WARMUP)], timeout, res, "warm-up")
        lat: list[float] = []
        for i in range(count):
            t0 = time.perf_counter()
            job = c.submit(i)
            finish([job], [i * 2], timeout, res, "latency jobs")
            lat.append(time.perf_counter() - t0)
        res["latency_median_ms"] = statistics.median(lat) * 1000
        res["latency_p99_ms"] = percentile(lat, 99) * 1000
        res["latency_min_ms"] = min(lat) * 1000
    else:
        payload = os.urandom(MIB)
        finish([c.submit(payload)], [MIB], timeout, res, "big warm-up")
        t0 = time.perf_counter()
        jobs = [c.submit(payload) for _ in range(count)]
        finish(jobs, [MIB] * count, timeout, res, "big jobs")
        elapsed = time.perf_counter() - t0
        res["big_seconds"] = elapsed
        res["big_mib_s"] = count / elapsed
    c.close()
    report(res)


if __name__ == "__main__":
    main()
