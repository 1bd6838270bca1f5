"""A dispyscheduler policy shipped outside neodispy: the computation with the fewest jobs waiting goes next."""

from __future__ import annotations

from dispy_smallfirst.policy import SmallestBacklogPolicy

__all__ = ["SmallestBacklogPolicy"]
