"""Hello, cluster: one function, a few jobs, their results and where they ran.

    python examples/hello_cluster.py
"""

from __future__ import annotations

from _local import example_nodes

import dispy


def compute(n: int) -> tuple[str, int]:
    """Runs on a node, in a process of its own: only what it imports and its arguments are there."""
    import socket

    print(f"squaring {n}")  # captured into job.stdout
    return socket.gethostname(), n * n


def main() -> int:
    with example_nodes(1) as where:
        with dispy.JobCluster(compute, nodes=where.nodes, secret=where.secret) as cluster:
            jobs = [cluster.submit(n) for n in range(8)]
            for job in jobs:
                host, square = job()  # waits for this job; its result, or None if it failed
                print(f"job {job.id}: {square} on {host}, stdout {job.stdout!r}")
            cluster.print_status()
            squares = [job.result[1] for job in jobs]
    assert squares == [n * n for n in range(8)], squares
    print("all 8 jobs finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
