"""Selected with ``extras = ["pulsetag"]`` in the site config or ``DISPY_EXTRAS=pulsetag``."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl

_config: Any = None


@hookimpl
def dispy_addoption(options: dict[str, Any], role: str) -> None:
    options["pulsetag.tag"] = "untagged"


@hookimpl
def dispy_configure(config: Any) -> None:
    global _config
    _config = config


@hookimpl
def dispy_pulse(node: Any) -> dict[str, Any]:
    tag = _config.get("pulsetag.tag", "untagged") if _config is not None else "untagged"
    return {"tag": tag, "node_name": node.name}
