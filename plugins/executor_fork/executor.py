"""The fork executor: each job is ``os.fork()``-ed from its computation's host process.

Jobs inherit the host's namespace (code, depends, setup's globals) copy-on-write, so starting one
costs a fork, and nothing has to be serialized but the arguments and the result. A setup returning 1
asks for its globals to be shipped instead: each job then gets its own deserialized copy, installed
while the job's process waits as a spare (see :mod:`dispy_plugins.executor_host.host`).
"""

from __future__ import annotations

from dispy_plugins.executor_host.client import HostExecutor


class ForkExecutor(HostExecutor):
    """POSIX: a host process per computation, a forked process per job."""

    name = "fork"
    mode = "fork"
