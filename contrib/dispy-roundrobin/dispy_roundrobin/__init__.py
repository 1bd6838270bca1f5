"""A round-robin scheduler for dispy, packaged as a third-party plugin distribution."""

from __future__ import annotations

from dispy_roundrobin.scheduler import RoundRobinScheduler

__all__ = ["RoundRobinScheduler"]
