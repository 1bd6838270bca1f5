"""Pickle for data, dill for code: fast for plain arguments, and ``__main__`` functions travel by value."""

from __future__ import annotations

import pickle
import types
from typing import Any

from dispy_core.byvalue import main_clone
from dispy_core.errors import SerializationError


class PickleSerializer:
    """Data goes through pickle protocol 5 (stable across Python 3.11-3.13); what pickle cannot
    handle (lambdas, closures, ``__main__`` classes passed by value) falls back to dill."""

    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
        import dill  # imported when needed: job processes forked from a lean host stay cheap to fork

        try:
            return dill.dumps(obj, protocol=5, recurse=True)
        except Exception as exc:  # dill raises many kinds
            raise SerializationError(f"cannot serialize {type(obj).__name__} object: {exc}") from exc

    def loads(self, data: bytes | memoryview) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise SerializationError(f"cannot load payload: {type(exc).__name__}: {exc}") from exc

    def dumps_code(self, obj: Any) -> bytes:
        """By value: dill records functions and classes of ``__main__`` with their code; a function from
        another module is cloned into ``__main__`` first, so nodes need not have that module."""
        if isinstance(obj, types.FunctionType) and obj.__module__ != "__main__":
            obj = main_clone(obj)
        elif isinstance(obj, list):
            obj = [main_clone(o) if isinstance(o, types.FunctionType) and o.__module__ != "__main__" else o
                   for o in obj]
        import dill

        try:
            return dill.dumps(obj, protocol=5, recurse=True, byref=False)
        except Exception as exc:
            raise SerializationError(f"cannot serialize {obj!r} by value: {exc}") from exc


