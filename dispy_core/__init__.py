"""The minimal core of dispy: hook specifications, plugin loading, protocol, state and drivers."""

from __future__ import annotations

__version__ = "0.1.0"
