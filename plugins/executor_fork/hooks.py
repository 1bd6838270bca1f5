"""Entry point of the ``fork`` executor plugin."""

from __future__ import annotations

import os
from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.executor_fork.executor import ForkExecutor


@hookimpl(trylast=True)
def dispy_make_executor(config: Any) -> ForkExecutor | None:
    """The fork executor, or None where there is no ``os.fork`` (Windows)."""
    return ForkExecutor(config) if hasattr(os, "fork") else None
