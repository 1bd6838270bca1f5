"""Entry point (group ``dispy.scheduler``, name ``roundrobin``): the module pluggy registers."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_roundrobin.scheduler import RoundRobinScheduler


@hookimpl
def dispy_make_scheduler(config: Any) -> RoundRobinScheduler:
    return RoundRobinScheduler()
