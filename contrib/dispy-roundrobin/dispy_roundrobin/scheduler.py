"""Hand jobs to free nodes in turn, ignoring how loaded each one is."""

from __future__ import annotations

from collections.abc import Sequence

from dispy_core.interfaces import NodeLoad


class RoundRobinScheduler:
    """Cycle over free nodes in ``node_id`` order.

    The position is remembered as the last chosen ``node_id`` rather than an index, so the cycle stays
    fair when nodes join, leave or are reordered between calls.
    """

    name = "roundrobin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, nodes: Sequence[NodeLoad]) -> str | None:
        free = sorted(node.node_id for node in nodes if 0 <= node.busy < node.cpus)
        if not free:
            return None
        chosen = free[0]
        if self._last is not None:
            chosen = next((node_id for node_id in free if node_id > self._last), free[0])
        self._last = chosen
        return chosen
