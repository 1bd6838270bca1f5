"""Entry point (group ``dispy.policy``, name ``smallest_backlog``): the module pluggy registers."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_smallfirst.policy import SmallestBacklogPolicy


@hookimpl
def dispy_make_policy(config: Any, name: str) -> SmallestBacklogPolicy | None:
    return SmallestBacklogPolicy() if name == SmallestBacklogPolicy.name else None
