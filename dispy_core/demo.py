"""``dispy demo``: a real computation on a local cluster the command starts itself (loopback only)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from dispy_core.testing.nodes import start_node


def count_primes(lo: int, hi: int) -> tuple[int, int, int, str]:
    """Count primes in [lo, hi) by trial division: real CPU work for a node."""
    count = 0
    for n in range(max(lo, 2), hi):
        if n % 2 == 0:
            count += n == 2
            continue
        f = 3
        while f * f <= n:
            if n % f == 0:
                break
            f += 2
        else:
            count += 1
    return lo, hi, count, dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected by the node


def run_demo(jobs: int = 16, executor: str = "fork") -> int:
    import dispy

    secret = os.urandom(12).hex()
    node = start_node(["--executor", executor], env={"DISPY_SECRET": secret},  # not on a command line
                      prefix=Path(tempfile.mkdtemp(prefix="dispy-demo-")))
    base = node.base_port
    try:
        print(f"started dispynode (pid {node.proc.pid}) on 127.0.0.1:{node.port} with the {executor} executor")
        span = 40_000
        done = 0

        def job_status(job: dispy.DispyJob) -> None:
            nonlocal done
            done += 1
            lo, hi, count, where = job.result if job.result else (0, 0, 0, "?")
            print(f"  [{done:>3}/{jobs}] primes in [{lo:>7}, {hi:>7}): {count:>5}  (node {where})", flush=True)

        start = time.monotonic()
        with dispy.JobCluster(count_primes, nodes=["127.0.0.1"], dispy_port=base, secret=secret,
                              job_status=job_status) as cluster:
            submitted = [cluster.submit(i * span, (i + 1) * span) for i in range(jobs)]
            results = [job() if job is not None else None for job in submitted]
            cluster.wait()
            failures = [j for j in submitted if j is None or j.status != dispy.DispyJob.Finished]
            for job in failures:
                print(f"job failed: {job and job.exception}", file=sys.stderr)
            total = sum(r[2] for r in results if r)
            elapsed = time.monotonic() - start
            time.sleep(0.2)  # let the last progress lines print
            cluster.print_status()
        print(f"\n{total} primes below {jobs * span:,}, computed by {jobs} jobs in {elapsed:.2f} s")
        return 1 if failures else 0
    finally:
        node.stop()
