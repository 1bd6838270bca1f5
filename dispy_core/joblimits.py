"""Per-job resource limits: ``JobCluster(..., job_limits={...})`` and the node's ceilings.

Pure parsing and combining, shared by both sides: the client checks a program's values when the
cluster is made (a typo fails there, not on a node), and the node's executor combines what the client
asked with its own ceilings (site config ``executor.max_memory``, ``executor.max_cpu_time``,
``executor.max_open_files``): a client gets at most the node's value, and the node's value when it
asks nothing. How a job process enforces them is the executor's business.

Keys: ``memory`` (bytes, or a string with a k/m/g suffix: ``"512m"``), ``cpu_time`` (seconds of CPU,
rounded up to whole seconds) and ``open_files`` (descriptors one process may have open).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

KEYS = ("memory", "cpu_time", "open_files")
NODE_KEYS = {"memory": "executor.max_memory", "cpu_time": "executor.max_cpu_time",
             "open_files": "executor.max_open_files"}
"""The node's site-config key bounding each limit."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY = 16 << 20
"""Below this no Python job can even start; a smaller value is refused rather than failing every job."""
MIN_OPEN_FILES = 16
"""A job process holds a few descriptors of its own (pipes to its host): fewer would fail every job."""


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as "512m", "2G", "1.5g", "65536" (k/m/g/t are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(f"expected bytes or a size such as '512m', got {value!r}")


def _one(key: str, value: Any) -> int:
    if key == "memory":
        size = parse_size(value)
        if size < MIN_MEMORY:
            raise ValueError(f"memory must be at least {describe('memory', MIN_MEMORY)}, not {value!r}")
        return size
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        raise ValueError(f"{key} must be a positive number, not {value!r}")
    if key == "cpu_time":
        return math.ceil(value)
    if not float(value).is_integer() or value < MIN_OPEN_FILES:
        raise ValueError(f"open_files must be a whole number of at least {MIN_OPEN_FILES}, not {value!r}")
    return int(value)


def check_job_limits(value: Any) -> dict[str, int]:
    """``job_limits`` as given to ``JobCluster``: a mapping of :data:`KEYS` to values (None: no limit).

    Returns the limits in base units (bytes, seconds, descriptors); raises ``ValueError`` naming the
    key at fault and the keys there are.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"job_limits must be a dict with keys {', '.join(KEYS)}, not {value!r}")
    unknown = set(value) - set(KEYS)
    if unknown:
        raise ValueError(f"job_limits has unknown keys {', '.join(sorted(map(str, unknown)))}; "
                         f"the keys are {', '.join(KEYS)}")
    limits = {}
    for key in KEYS:
        if value.get(key) is not None:
            try:
                limits[key] = _one(key, value[key])
            except ValueError as exc:
                raise ValueError(f"job_limits: {exc}") from None
    return limits


def node_ceilings(get: Any) -> dict[str, int]:
    """The node's ceilings from its config (``get(dotted_key, default)``); raises ``ValueError`` naming the key."""
    ceilings = {}
    for key, setting in NODE_KEYS.items():
        value = get(setting, None) if get is not None else None
        if value is not None:
            try:
                ceilings[key] = _one(key, value)
            except ValueError as exc:
                raise ValueError(f"{setting}: {exc}") from None
    return ceilings


def combine(asked: Mapping[str, int], ceilings: Mapping[str, int]) -> dict[str, int]:
    """What a job gets: the lower of the client's and the node's value, where either has one."""
    limits = {}
    for key in KEYS:
        values = [v for v in (asked.get(key), ceilings.get(key)) if v]
        if values:
            limits[key] = min(values)
    return limits


def describe(key: str, value: int) -> str:
    """A limit as a person reads it: "512 MiB", "60 s", "256"."""
    if key == "memory":
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                amount = value / size
                return f"{amount:g} {unit}" if amount.is_integer() else f"{amount:.1f} {unit}"
        return f"{value} bytes"
    if key == "cpu_time":
        return f"{value} s"
    return str(value)


def summary(limits: Mapping[str, int]) -> str:
    """All limits in one phrase: "memory 512 MiB, CPU time 60 s, open files 256"."""
    names = {"memory": "memory", "cpu_time": "CPU time", "open_files": "open files"}
    return ", ".join(f"{names[k]} {describe(k, limits[k])}" for k in KEYS if k in limits)
