"""Entry point of the ``loadbalance`` scheduler plugin."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler


@hookimpl(trylast=True)
def dispy_make_scheduler(config: Any) -> LoadBalanceScheduler:
    return LoadBalanceScheduler()
