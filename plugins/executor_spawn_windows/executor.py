"""The spawn executor: each job runs in a fresh interpreter (the Windows process model).

Setup runs in the computation's host process; the globals it creates or replaces are serialized and
installed into every job's interpreter, whatever setup returned (0, 1 or 2: there is no fork to share
them), so only serializable globals reach jobs. One interpreter is kept started and loaded ahead of need, so
a job waits for the computation's load only when jobs arrive faster than interpreters start.
"""

from __future__ import annotations

from dispy_plugins.executor_host.client import HostExecutor


class SpawnExecutor(HostExecutor):
    """A host process per computation, a new interpreter per job."""

    name = "spawn"
    mode = "spawn"
