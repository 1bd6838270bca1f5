"""Two programs share the same nodes through ``dispyscheduler``: ``SharedJobCluster``.

    python examples/shared_cluster.py

The scheduler owns the nodes (it proves the nodes' secret to them); each program proves the scheduler's
own ``--cluster_secret`` and sees the scheduler as one big node. Here two clusters in one program stand
for two programs; the ``fair_cluster`` policy makes them take turns on the CPUs.
"""

from __future__ import annotations

from _local import example_nodes, example_scheduler

import dispy


def where_am_i(n: int) -> tuple[int, str]:
    import time

    time.sleep(0.2)
    return n, dispy_node_name  # noqa: F821 - the node gives every job its name


def main() -> int:
    with example_nodes(2) as nodes, example_scheduler(nodes, ["--fair_cluster_scheduler"]) as scheduler:
        options = dict(scheduler_node=scheduler.host, scheduler_port=scheduler.port, secret=scheduler.secret)
        with dispy.SharedJobCluster(where_am_i, **options) as first, \
                dispy.SharedJobCluster(where_am_i, **options) as second:
            jobs = [cluster.submit(n) for n in range(6) for cluster in (first, second)]
            results = [job() for job in jobs]
            first.print_status()  # the scheduler is this cluster's one node
    print(f"{len(results)} jobs of two clusters ran, for example {results[0]}")
    assert sorted(n for n, _ in results) == sorted(list(range(6)) * 2), results
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
