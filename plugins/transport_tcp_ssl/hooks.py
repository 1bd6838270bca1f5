"""Entry point of the ``tcp`` transport plugin (TLS when the config names a certificate)."""

from __future__ import annotations

from typing import Any

from dispy_core.hookspecs import hookimpl
from dispy_plugins.transport_tcp_ssl.transport import TcpTransport


@hookimpl(trylast=True)
def dispy_make_transport(config: Any, scheme: str) -> TcpTransport | None:
    return TcpTransport(config) if scheme == "tcp" else None
