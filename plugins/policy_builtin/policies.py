"""dispyscheduler's built-in policies between computations: whose waiting job takes a free CPU slot next.

Each is a pure choice among :class:`~dispy_core.interfaces.ClusterView` snapshots (computations with a job
waiting and room at the node), made once per free slot; ties go to the computation that came first.

- ``loadbalance`` (the default): the earliest-submitted job first, whatever its computation, so a
  computation's share follows how many jobs it submitted and when.
- ``fair_cluster`` (the original's ``--fair_cluster_scheduler``): the computation least recently served goes
  next, so computations take turns slot by slot, however many jobs each has queued.
- ``early_cluster`` (``--early_cluster_scheduler``): the earliest-created computation goes next; later ones
  get only the CPUs it cannot use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dispy_core.interfaces import ClusterView

__all__ = ["POLICIES", "EarlyClusterPolicy", "FairClusterPolicy", "LoadBalancePolicy"]


class _KeyPolicy:
    """The computation with the smallest key."""

    name = ""
    key: Callable[[ClusterView], tuple[float, ...]]

    def choose(self, clusters: Sequence[ClusterView], node_id: str) -> str | None:
        return min(clusters, key=type(self).key).comp_id if clusters else None


class LoadBalancePolicy(_KeyPolicy):
    """Earliest-submitted job first."""

    name = "loadbalance"

    @staticmethod
    def key(view: ClusterView) -> tuple[float, ...]:
        return (view.next_submit, view.order)


class FairClusterPolicy(_KeyPolicy):
    """The computation least recently served first (never served: first of all, in arrival order)."""

    name = "fair_cluster"

    @staticmethod
    def key(view: ClusterView) -> tuple[float, ...]:
        return (view.served, view.order)


class EarlyClusterPolicy(_KeyPolicy):
    """The earliest-created computation first."""

    name = "early_cluster"

    @staticmethod
    def key(view: ClusterView) -> tuple[float, ...]:
        return (view.order,)


POLICIES: dict[str, type[_KeyPolicy]] = {cls.name: cls for cls in (LoadBalancePolicy, FairClusterPolicy,
                                                                    EarlyClusterPolicy)}
