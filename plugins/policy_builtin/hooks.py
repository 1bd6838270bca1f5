"""Entry point of the ``loadbalance``, ``fair_cluster`` and ``early_cluster`` policies (group ``dispy.policy``)."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.policy_builtin.policies import POLICIES


@hookimpl(trylast=True)
def dispy_make_policy(config: Any, name: str) -> Any:
    cls = POLICIES.get(name)
    return cls() if cls is not None else None
