"""Parsing sizes given by users: ``10m``, ``2G``, ``4096``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` (k/m/g/t suffixes, powers of 1024); ValueError names the bad text."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must be >= 0, not {text}")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"invalid size {text!r}: use a number with an optional k, m, g or t suffix")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
