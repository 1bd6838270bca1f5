"""Conformance checks, one per plugin role, for any plugin's own test suite.

::

    from dispy_core.testing import check_scheduler, check_serializer, check_transport, check_executor

    def test_my_scheduler():
        check_scheduler(MyScheduler)            # a factory: each call a fresh scheduler

Each check raises AssertionError naming what the plugin did wrong. The transport and executor checks
have ``*_async`` forms to await inside a running event loop.
"""

from __future__ import annotations

from dispy_core.testing.conformance.executor import check_executor, check_executor_async
from dispy_core.testing.conformance.scheduler import check_scheduler
from dispy_core.testing.conformance.serializer import check_serializer
from dispy_core.testing.conformance.transport import check_transport, check_transport_async

__all__ = ["check_executor", "check_executor_async", "check_scheduler", "check_serializer", "check_transport",
           "check_transport_async"]
