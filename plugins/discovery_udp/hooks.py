"""Entry point of the ``udp`` discovery plugin."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.discovery_udp.discovery import UdpDiscovery


@hookimpl(trylast=True)
def dispy_make_discovery(config: Any) -> UdpDiscovery:
    return UdpDiscovery(config)
