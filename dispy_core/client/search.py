"""Finding the nodes a cluster's wildcard patterns stand for, through the discovery plugin's search.

Named hosts are contacted directly (``NodeLife.discover``); a pattern (``'*'``, ``'node-*'``) can only be
matched against the nodes that answer a ping or announce themselves, now or later, so the search keeps
listening for as long as the cluster lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from dispy_core.client.allocation import NodeEntry
from dispy_core.client.nodes import DispyNode
from dispy_core.status import NodeStatus

if TYPE_CHECKING:
    from dispy_core.client.connections import NodeConn, NodeLife

log = logging.getLogger("dispy")

__all__ = ["SEARCH_PINGS", "SEARCH_WAIT", "NodeSearch"]

SEARCH_PINGS, SEARCH_WAIT = 3, 1.5
"""A search pings this many times (a lost datagram must not hide a node) over this many seconds, then the
cluster counts what answered (late nodes still join when heard)."""


class NodeSearch:
    """The patterns of one cluster and the search that finds nodes for them."""

    def __init__(self, life: NodeLife) -> None:
        self.life = life
        self.cluster = life.cluster
        self.patterns: list[NodeEntry] = []  # wildcard entries: nodes found by discovery that match one are used
        self.searcher: Any = None  # the discovery plugin's search, once a pattern asked for one

    async def search(self, entries: list[NodeEntry]) -> list[NodeConn]:
        """Ping, and use each node that answers (or announces itself later) and matches a pattern of
        ``entries``; wait ``SEARCH_WAIT`` s for answers, then until each node that answered was tried."""
        life = self.life
        new = [e for e in entries if e.alloc.is_pattern and e not in self.patterns]
        if not new and not any(e.alloc.is_pattern for e in entries):
            return []
        self.patterns.extend(new)
        if self.searcher is None and not await self._start():
            return []
        before = set(life.nodes)
        for _ in range(SEARCH_PINGS):
            if hasattr(self.searcher, "unicast"):  # named hosts as they resolve
                self.searcher.unicast.update(life.unicast_targets)
            self.searcher.ping()
            await asyncio.sleep(SEARCH_WAIT / SEARCH_PINGS)
        found = [conn for key, conn in life.nodes.items() if key not in before]
        pending = [c.op for c in found if c.op is not None and not c.op.done()]
        if pending:
            await asyncio.wait(pending)
        if not found and not any(c.state == "ready" for c in life.nodes.values()):
            reason = f"no node answered discovery ({self.searcher.describe()}); still listening"
            log.warning("cluster %s: %s", self.cluster.name, reason)
            patterns = ", ".join(e.alloc.host for e in self.patterns)
            seeker = DispyNode(patterns, self.cluster.node_port)  # a stand-in for the nodes looked for
            seeker.reason = reason
            life.driver.node_status(NodeStatus.Closed, seeker)  # cluster_status hears it too
        return found

    async def _start(self) -> bool:
        cluster = self.cluster
        if not hasattr(cluster.discovery, "search"):
            self.life.record_failure("*", f"discovery plugin {getattr(cluster.discovery, 'name', '?')} cannot "
                                          f"search for nodes by pattern; name the nodes")
            return False
        host = cluster.host or os.environ.get("DISPY_HOST", "")
        hosts = [h for h in (host if isinstance(host, list | tuple) else [host]) if h]
        self.searcher = cluster.discovery.search(
            secret=cluster.secret, node_port=cluster.node_port, client_port=cluster.client_port,
            on_found=self._found, name=cluster.name, hosts=hosts, ipv4_multicast=cluster.ipv4_udp_multicast,
            **cluster.multicast_groups)
        try:
            await self.searcher.start()
        except OSError as exc:
            self.life.record_failure("*", f"cannot search for nodes: {exc}")
            self.searcher = None
            return False
        return True

    def close(self) -> None:
        """Stop listening: the cluster closes."""
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None

    def _found(self, ip_addr: str, port: int, name: str) -> None:
        """A node answered a ping or announced itself: use it if a pattern matches and it is not in use."""
        key = f"{ip_addr}:{port}"
        nodes = self.life.nodes
        if self.cluster._closed or key in nodes:
            return
        if name and any(c.node.name == name and c.node.port == port for c in nodes.values()):
            return  # the same node heard at another of its addresses (IPv4 and IPv6, two interfaces)
        entry = next((e for e in self.patterns if e.alloc.matches(ip_addr, name) and e.alloc.port in (None, port)),
                     None)
        if entry is None:
            log.debug("node %s (%s) found, but no pattern of cluster %s matches it", key, name, self.cluster.name)
            return
        log.debug("node %s (%s) found by discovery", key, name)
        self.life.found(key, ip_addr, port, name, entry)
