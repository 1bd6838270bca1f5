"""Shipping a function by value: dill sends the code of what lives in ``__main__``, and only the import path of
what lives in a module (which the node may not have). A clone that claims ``__main__`` is sent whole."""

from __future__ import annotations

import types

__all__ = ["main_clone"]


def main_clone(fn: types.FunctionType) -> types.FunctionType:
    """A copy of ``fn`` that claims to live in ``__main__``: dill then ships its code, not its import path."""
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__qualname__ = fn.__qualname__
    clone.__module__ = "__main__"
    clone.__doc__ = fn.__doc__
    return clone
