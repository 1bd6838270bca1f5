"""The fork executor: each job is ``os.fork()``-ed from its computation's host process.

Jobs inherit the host's namespace (code, depends, setup's globals) copy-on-write, so starting one
costs a fork, and nothing has to be serialized but the arguments and the result.
"""

from __future__ import annotations

from dispy_core.execution.client import HostExecutor


class ForkExecutor(HostExecutor):
    """POSIX: a host process per computation, a forked process per job."""

    name = "fork"
    mode = "fork"
