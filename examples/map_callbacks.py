"""Many jobs, results handled as they arrive: ``job_status`` and ``cluster_status`` callbacks.

    python examples/map_callbacks.py

Callbacks run in one thread of the cluster, one at a time, so they may update shared data without locks;
they must not block (no ``job()`` or ``cluster.wait()`` in them).
"""

from __future__ import annotations

from _local import example_nodes

import dispy


def collatz_steps(n: int) -> int:
    """How many steps the Collatz sequence of ``n`` takes to reach 1."""
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


results: dict[int, int] = {}


def job_status(job: dispy.DispyJob) -> None:
    """Called at every change of a job's status; Finished carries the result."""
    if job.status == dispy.DispyJob.Finished:
        results[job.id] = job.result
    elif job.status in (dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned, dispy.DispyJob.Cancelled):
        print(f"job {job.id} failed: {job.exception}")


def cluster_status(status: int, node: dispy.DispyNode, job: dispy.DispyJob | None) -> None:
    """Called when a node is set up or closed (and with every job's status, as job_status is)."""
    if status == dispy.DispyNode.Initialized:
        print(f"node {node.ip_addr} ({node.name}) is ready with {node.cpus} CPUs")
    elif status == dispy.DispyNode.Closed:
        print(f"node {node.ip_addr} closed{': ' + node.reason if node.reason else ''}")


def main() -> int:
    numbers = range(1, 41)
    with example_nodes(2) as where:
        with dispy.JobCluster(collatz_steps, nodes=where.nodes, secret=where.secret, job_status=job_status,
                              cluster_status=cluster_status) as cluster:
            for n in numbers:
                cluster.submit_job_id(n, n)  # the job's id is its number: results come back by id
            cluster.wait()
    longest = max(results, key=results.__getitem__)
    print(f"{len(results)} results; {longest} takes the most steps: {results[longest]}")
    assert results == {n: collatz_steps(n) for n in numbers}
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
