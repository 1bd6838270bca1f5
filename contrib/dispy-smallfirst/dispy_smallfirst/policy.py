"""Smallest backlog first: a short computation is not stuck behind a long batch that was submitted earlier."""

from __future__ import annotations

from collections.abc import Sequence

from dispy_core.interfaces import ClusterView


class SmallestBacklogPolicy:
    """The computation with the fewest jobs waiting at the scheduler goes next; ties go to the one that came first.

    The arbiter updates ``pending`` after each slot it hands out, so a short computation takes slots only while
    it has fewer jobs waiting than the others, and a long one is never starved of CPUs nobody else wants.
    """

    name = "smallest_backlog"

    def choose(self, clusters: Sequence[ClusterView], node_id: str) -> str | None:
        if not clusters:
            return None
        return min(clusters, key=lambda view: (view.pending, view.order)).comp_id
