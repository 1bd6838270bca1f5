"""Nodes for the examples to run on, so that each example runs as it is, on one machine.

Set ``DISPY_NODES`` (comma separated hosts, nodes started with ``dispynode --secret ...``) and ``DISPY_SECRET``
to run an example on your own nodes. Otherwise the example starts ``dispynode`` processes here, bound to
127.0.0.1 on free ports with a fresh secret, and stops them when it ends. The secret reaches them through
their environment, never their command line, where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispy_core.testing.nodes import NodeProcess, start_node
from dispy_core.testing.scheduler import start_scheduler


@dataclass
class ExampleNodes:
    """Where the example's nodes are: pass ``nodes`` and ``secret`` to ``JobCluster``."""

    nodes: list[Any]
    secret: str
    processes: list[NodeProcess] = field(default_factory=list)


@contextlib.contextmanager
def example_nodes(count: int = 1, node_args: Sequence[str] = (), secret: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[ExampleNodes]:
    """``count`` local nodes (each started with ``node_args``), or the nodes ``DISPY_NODES`` names."""
    named = [host.strip() for host in os.environ.get("DISPY_NODES", "").split(",") if host.strip()]
    if named:
        yield ExampleNodes(named, os.environ.get("DISPY_SECRET", ""))
        return
    secret = secret or secrets.token_hex(16)
    processes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory(prefix="dispy-example-") as tmp, contextlib.ExitStack() as stops:
        for number in range(count):
            prefix = Path(tmp) / f"node{number}"
            prefix.mkdir()
            process = start_node(node_args, env={"DISPY_SECRET": secret, **(env or {})}, prefix=prefix)
            stops.callback(process.stop)
            processes.append(process)
        print(f"started {count} local dispynode(s) on 127.0.0.1, ports "
              f"{', '.join(str(p.port) for p in processes)}", flush=True)
        yield ExampleNodes([(p.host, p.port) for p in processes], secret, processes)


@dataclass
class ExampleScheduler:
    """Where the example's dispyscheduler takes clients: pass these to ``SharedJobCluster``."""

    host: str
    port: int
    secret: str


@contextlib.contextmanager
def example_scheduler(where: ExampleNodes, policy_args: Sequence[str] = ()) -> Iterator[ExampleScheduler]:
    """A ``dispyscheduler`` on 127.0.0.1 that uses the example's nodes, with a cluster secret of its own."""
    cluster_secret = secrets.token_hex(16)
    nodes = where.processes or [str(host) for host in where.nodes]
    with tempfile.TemporaryDirectory(prefix="dispy-example-scheduler-") as tmp:
        scheduler = start_scheduler(nodes, policy_args, prefix=Path(tmp),
                                    env={"DISPY_NODE_SECRET": where.secret, "DISPY_CLUSTER_SECRET": cluster_secret})
        try:
            print(f"started dispyscheduler on 127.0.0.1, clients' port {scheduler.port}", flush=True)
            yield ExampleScheduler(scheduler.host, scheduler.port, cluster_secret)
        finally:
            scheduler.stop()
