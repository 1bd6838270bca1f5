"""Least-loaded-first: dispy's default policy, keeping every node's CPUs equally busy."""

from __future__ import annotations

from collections.abc import Sequence

from dispy_core.interfaces import NodeLoad

__all__ = ["LoadBalanceScheduler"]


class LoadBalanceScheduler:
    """Pick the free node with the lowest busy/cpus ratio.

    Ties go to the node with fewer busy CPUs, then to the faster one (lower ``avg_job_time``; 0 means
    not yet measured and counts as fastest, so new nodes get tried), then to the smaller ``node_id`` so
    that equal snapshots always give the same answer.
    """

    name = "loadbalance"

    def choose(self, nodes: Sequence[NodeLoad]) -> str | None:
        best: NodeLoad | None = None
        best_key: tuple[float, int, float, str] | None = None
        for node in nodes:
            if node.cpus <= 0 or node.busy >= node.cpus:
                continue
            key = (node.busy / node.cpus, node.busy, node.avg_job_time, node.node_id)
            if best_key is None or key < best_key:
                best, best_key = node, key
        return best.node_id if best is not None else None
