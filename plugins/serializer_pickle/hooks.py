"""Entry point of the ``pickle`` serializer plugin."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.serializer_pickle.serializer import PickleSerializer


@hookimpl(trylast=True)
def dispy_make_serializer(config: Any, name: str) -> PickleSerializer | None:
    return PickleSerializer() if name == "pickle" else None
