"""Conformance of a serializer plugin: data round trips exactly, code travels by value, garbage is refused."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import math
import sys
import textwrap
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispy_core.interfaces import Serializer

__all__ = ["check_serializer"]


@dataclass(frozen=True)
class Point:
    """An importable class: instances travel by reference to it."""

    x: int
    y: float


def _samples() -> list[tuple[str, Any]]:
    nested: dict[str, Any] = {"list": [1, [2, [3, (4, 5)]]], "dict": {"a": {"b": {"c": None}}}}
    return [
        ("None", None), ("True", True), ("False", False), ("0", 0), ("-1", -1), ("2**100", 2**100),
        ("-(2**70)", -(2**70)), ("float", 1.5), ("-0.0", -0.0), ("inf", math.inf), ("nan", math.nan),
        ("complex", 1 + 2j), ("empty str", ""), ("str", "dispy ü € 𝄞 \x00"), ("empty bytes", b""),
        ("bytes", bytes(range(256))), ("bytearray", bytearray(b"\x00\xffabc")),
        ("1 MiB of bytes", bytes(range(256)) * 4096), ("tuple", (1, "a", b"b", None)), ("empty tuple", ()),
        ("list", [1, 2.0, "3", [4]]), ("set", {1, 2, 3}), ("frozenset", frozenset({"a", "b"})),
        ("dict", {"n": 1, 2: "two", (3, 4): [5], None: b"6"}), ("nested", nested),
        ("range", range(2, 20, 3)), ("datetime", datetime.datetime(2024, 2, 29, 12, 30, 1, 5)),
        ("date", datetime.date(1999, 12, 31)), ("timedelta", datetime.timedelta(days=2, seconds=3)),
        ("Decimal", decimal.Decimal("3.14159265358979323846")), ("Fraction", fractions.Fraction(22, 7)),
        ("UUID", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("OrderedDict", collections.OrderedDict([("b", 1), ("a", 2)])), ("deque", collections.deque([1, 2])),
        ("dataclass instance", Point(3, 4.5)), ("a list of 10000 ints", list(range(10000))),
        ("args and kwargs, as jobs send them", ((1, "x"), {"key": [1.0]})),
    ]


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (so True != 1, a tuple is no list, nan is nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list | tuple | collections.deque):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _by_value_code() -> dict[str, Any]:
    """Code as a client's ``__main__`` defines it: no module can import it, so only by value works."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import math
        OFFSET = 40
        def make_adder(n):
            def add(x):
                return x + n + OFFSET
            return add
        adder = make_adder(1)
        scale = lambda x, k=3: x * k
        class Counter:
            start = 10
            def __init__(self, step):
                self.step = step
            def next(self, value):
                return math.floor(value + self.step + self.start)
        def uses_class(v):
            return Counter(2).next(v)
    """), ns)
    return ns


def _vanishing_module_function() -> tuple[Any, Callable[[], object]]:
    """A function of a module that is importable now and gone at ``loads`` time (as on a node)."""
    name = "dispy_conformance_vanishing_module"
    module = types.ModuleType(name)
    exec(textwrap.dedent("""
        FACTOR = 6
        def times(x):
            return x * FACTOR
    """), module.__dict__)
    sys.modules[name] = module
    return module.times, lambda: sys.modules.pop(name, None)


def check_serializer(serializer: Serializer) -> None:
    """Check a serializer; AssertionError names what it did wrong.

    Checks: ``name`` is a non-empty str; ``dumps`` returns bytes for many types (ints of any size, floats
    with nan/inf/-0.0, str, bytes, bytearray, 1 MiB blobs, containers nested and empty, sets, datetimes,
    Decimal, Fraction, UUID, dataclass instances) and ``loads`` gives back an equal object of the same
    types, from bytes and from a memoryview into a larger buffer (the core keeps payloads as views of
    frames); ``dumps_code`` of a closure, a lambda with defaults, a class and a function using a class,
    all from a ``__main__`` no module can import, and of a function whose module is gone when it is
    loaded, loads into working code; ``loads`` of empty,
    truncated or garbage bytes raises; ``dumps`` of an unserializable object (a generator) raises.
    """
    name = getattr(serializer, "name", None)
    label = f"serializer {name!r}"

    def fail(what: str) -> AssertionError:
        return AssertionError(f"{label}: {what}")

    if not isinstance(name, str) or not name:
        raise fail("name should be a non-empty str")
    if not isinstance(serializer, Serializer):
        raise fail("does not follow the Serializer protocol (name, dumps, loads, dumps_code)")
    for what, obj in _samples():
        _round_trip(serializer, what, obj, fail)
    _check_code(serializer, fail)
    _check_refusals(serializer, fail)


def _round_trip(serializer: Serializer, what: str, obj: Any, fail: Any) -> None:
    try:
        blob = serializer.dumps(obj)
    except Exception as exc:
        raise fail(f"dumps() of {what} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, bytes):
        raise fail(f"dumps() of {what} returned {type(blob).__name__}, not bytes")
    framed = bytearray(b"\xa5" * 13) + blob + b"\x5a" * 7
    for how, data in (("bytes", blob), ("a memoryview into a larger buffer", memoryview(framed)[13:13 + len(blob)])):
        try:
            back = serializer.loads(data)
        except Exception as exc:
            raise fail(f"loads() of {what} from {how} raised {type(exc).__name__}: {exc}") from exc
        if not _same(back, obj):
            shown = repr(back)
            raise fail(f"{what} did not survive a round trip (from {how}): got "
                       f"{type(back).__name__} {shown[:80]}{'...' if len(shown) > 80 else ''}")


def _check_code(serializer: Serializer, fail: Any) -> None:
    ns = _by_value_code()
    cases: list[tuple[str, Any, Any]] = [
        ("a closure", ns["adder"], lambda f: f(1) == 42),
        ("a lambda with a default argument", ns["scale"], lambda f: f(2) == 6 and f(2, 5) == 10),
        ("a class", ns["Counter"], lambda c: c(1).next(0.5) == 11 and c.__name__ == "Counter"),
        ("a function using a class of __main__", ns["uses_class"], lambda f: f(1) == 13),
        ("a list of functions (depends)", [ns["adder"], ns["scale"]], lambda fs: fs[0](0) + fs[1](1) == 44),
    ]
    times, forget = _vanishing_module_function()
    cases.append(("a function of a module the receiver does not have", times, lambda f: f(7) == 42))
    for what, obj, works in cases:
        try:
            blob = serializer.dumps_code(obj)
        except Exception as exc:
            raise fail(f"dumps_code() of {what} raised {type(exc).__name__}: {exc}") from exc
        finally:
            if obj is times:
                forget()
        if not isinstance(blob, bytes):
            raise fail(f"dumps_code() of {what} returned {type(blob).__name__}, not bytes")
        try:
            back = serializer.loads(blob)
            ok = works(back)
        except Exception as exc:
            raise fail(f"{what} does not work after dumps_code() and loads() (not by value?): "
                       f"{type(exc).__name__}: {exc}") from exc
        if not ok:
            raise fail(f"{what} gives wrong answers after dumps_code() and loads()")


def _check_refusals(serializer: Serializer, fail: Any) -> None:
    truncated = serializer.dumps(list(range(1000)))[:-5]
    for what, data in (("empty bytes", b""), ("truncated data", truncated), ("garbage", b"\xff" * 64),
                       ("text", b"not a payload at all")):
        try:
            back = serializer.loads(data)
        except Exception:
            continue
        raise fail(f"loads() of {what} returned {type(back).__name__} {repr(back)[:40]} instead of raising")
    try:
        serializer.dumps(x for x in range(3))
    except Exception:
        return
    raise fail("dumps() of a generator did not raise")
