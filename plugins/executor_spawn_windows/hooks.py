"""Entry point of the ``spawn`` executor plugin."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.executor_spawn_windows.executor import SpawnExecutor


@hookimpl(trylast=True)
def dispy_make_executor(config: Any) -> SpawnExecutor | None:
    """The spawn executor runs everywhere."""
    return SpawnExecutor(config)
