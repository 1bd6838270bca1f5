"""The loop-thread side of a cluster's node operations (``allocate_node``, ``close_node``, ...).

``JobCluster``'s public methods run on the program's threads and hand these to the loop thread, where the
connections and the state live; each answers as the client API reference says (0, -1, a list).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dispy_core.client.allocation import parse_nodes
from dispy_core.client.connections import CLOSED, CLOSING, CONNECTING, READY, SETUP
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode
from dispy_core.state import events as ev

if TYPE_CHECKING:
    from dispy_core.client.cluster import JobCluster

log = logging.getLogger("dispy")


class NodeOps:
    """What the node operations do, on the loop thread of ``cluster``."""

    def __init__(self, cluster: JobCluster) -> None:
        self.cluster = cluster
        self._life = cluster._life
        self._driver = cluster._driver

    def pin_key(self, spec: Any) -> str | None:
        conn = self._life.find(spec)
        if conn is not None:
            return conn.node.key
        if self.cluster._discovered.is_set():
            return None
        if isinstance(spec, DispyNode):
            return spec.key
        return f"{spec}:{self.cluster.node_port}" if isinstance(spec, str) else None  # may still be being found

    async def allocate(self, spec: Any) -> int:
        entries = parse_nodes(spec, self.cluster.node_port)
        if len(entries) != 1:
            raise ValueError(f"allocate_node takes one node, not {spec!r}")
        entry = entries[0]
        if entry.alloc.is_pattern:
            self.cluster._entries.append(entry)  # applies to nodes found from now on, and to deallocated ones now
            for conn in list(self._life.nodes.values()):
                if conn.state == READY and entry.alloc.matches(conn.node.ip_addr, conn.node.name):
                    self._life.set_allocated(conn, True)
            return 0
        known = self._life.find(spec if isinstance(spec, DispyNode | str) else entry.alloc)
        if known is not None and known.op is not None and not known.op.done():
            await asyncio.wait([known.op])
        if not entry.plain:
            self.cluster._entries.insert(0, entry)  # its settings govern this node from now on
        conns = await self._life.discover([entry]) if known is None or known.state != READY else [known]
        usable = 0
        for conn in conns:
            if conn.state == READY:
                self._life.set_allocated(conn, True)
                usable += 1
        return 0 if usable else -1

    def deallocate(self, spec: Any) -> int:
        conn = self._life.find(spec)
        if conn is None or conn.state not in (READY, SETUP, CONNECTING):
            return -1
        self._life.set_allocated(conn, False)
        return 0

    def close(self, spec: Any, terminate: bool) -> int:
        conn = self._life.find(spec)
        if conn is None or conn.state == CLOSED:
            return -1
        if conn.state != CLOSING:
            self._life.queue_op(conn, lambda: self._life.close_op(conn, release=True, terminate=terminate))
        return 0

    def resetup(self, spec: Any) -> int:
        conn = self._life.find(spec)
        if conn is None or conn.state != READY:
            return -1
        self._life.queue_op(conn, lambda: self._life.resetup_op(conn))
        return 0

    def jobs(self, spec: Any) -> list[DispyJob]:
        conn = self._life.find(spec)
        if conn is None:
            return []
        jobs = self._driver.jobs
        return [jobs[uid] for uid in self._driver.state.running_uids(conn.node.key) if uid in jobs]

    def set_cpus(self, spec: Any, cpus: int) -> int:
        conn = self._life.find(spec)
        if conn is None or conn.state != READY or not isinstance(cpus, int):
            return -1
        limit = conn.max_cpus
        wanted = limit if cpus == 0 else (limit + cpus if cpus < 0 else min(cpus, limit))
        if wanted <= 0:
            log.warning("set_node_cpus(%s, %d): leaves no CPU of the %d granted", conn.node.key, cpus, limit)
            return -1
        self._driver.feed(ev.NodeCpus(conn.node.key, wanted))
        self._driver.sync(conn)
        return wanted

    def snapshot(self) -> tuple[list[DispyNode], dict[str, str]]:
        return self._life.snapshot()

    def records(self) -> list[DispyNode]:
        self._life.snapshot()
        return list(self._life.records.values())
