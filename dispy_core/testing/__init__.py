"""The kit for tests and plugin authors.

- conformance checks per plugin role: :func:`check_transport`, :func:`check_serializer`,
  :func:`check_scheduler`, :func:`check_executor` (and the ``*_async`` forms);
- an in-process transport, :class:`MemoryTransport` over a shared :class:`MemoryNetwork`, and
  :class:`MemoryTransportPlugin` to put a whole cluster on it (many simulated nodes in one process);
- :mod:`dispy_core.testing.certs` (throw-away certificates), :mod:`dispy_core.testing.nodes` (real
  ``dispynode`` processes on loopback) and :mod:`dispy_core.testing.waiting`, imported by path.
"""

from __future__ import annotations

from dispy_core.testing.conformance import (
    check_executor,
    check_executor_async,
    check_scheduler,
    check_serializer,
    check_transport,
    check_transport_async,
)
from dispy_core.testing.memory import MemoryConnectionRefused, MemoryNetwork, MemoryTransport, MemoryTransportPlugin

__all__ = ["MemoryConnectionRefused", "MemoryNetwork", "MemoryTransport", "MemoryTransportPlugin",
           "check_executor", "check_executor_async", "check_scheduler", "check_serializer", "check_transport",
           "check_transport_async"]
