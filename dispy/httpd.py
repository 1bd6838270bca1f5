"""``from dispy.httpd import DispyHTTPServer``: the web monitor of a program's clusters (``dispy_core.monitor``)."""

from __future__ import annotations

from dispy_core.monitor.server import DispyHTTPServer

__all__ = ["DispyHTTPServer"]
