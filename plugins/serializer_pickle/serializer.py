"""Pickle for data, dill for code: fast for plain arguments, and ``__main__`` functions travel by value."""

from __future__ import annotations

import pickle
from typing import Any

import dill

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
        """By value: dill records functions and classes of ``__main__`` with their code."""
        try:
            return dill.dumps(obj, protocol=5, recurse=True, byref=False)
        except Exception as exc:
            raise SerializationError(f"cannot serialize {obj!r} by value: {exc}") from exc
