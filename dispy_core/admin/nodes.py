"""The nodes dispyadmin administers: those named (``-n``) and those discovery finds, and the operations on
them, for callers on any thread (the command line, the web page's request threads).

The admin protocol is asyncio (``client.py``); one event loop on a thread of its own runs it and the
discovery search, and :meth:`AdminNodes.call` waits for a result from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any, TypeVar

from dispy_core.admin.client import AdminClient, AdminError, NodeAddress, parse_node
from dispy_core.config import Config
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m

log = logging.getLogger("dispy.admin")

_T = TypeVar("_T")
DISCOVERY_WAIT = 2.0
"""Seconds to wait for nodes to answer a discovery ping before a one-shot operation goes ahead."""
MAX_NODES = 4096
"""Nodes remembered at most: discovery cannot make dispyadmin grow without bound."""


class AdminNodes:
    """Known nodes and the admin operations on them (``start()`` first, ``close()`` at the end)."""

    def __init__(self, config: Config, admin_secret: str, nodes: list[NodeAddress], *, discover: bool = False,
                 secret: str = "", node_port: int = 9701, hosts: list[str] | None = None) -> None:
        self.config = config
        self.plugins = DispyPluginManager(config)
        self.client = AdminClient(self.plugins.make_transport("tcp"), admin_secret, config.msg_timeout)
        self.named = list(dict.fromkeys(nodes))
        self.found: dict[NodeAddress, str] = {}
        """Nodes discovery found, with the name they announced."""
        self.discover = discover
        self._discovery_secret = secret
        self.node_port = node_port
        self.hosts = list(hosts or [])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dispyadmin-loop", daemon=True)
        self._search: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AdminNodes({len(self.nodes)} nodes)"  # never the secrets

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self._thread.start()
        if self.discover:
            self.call(self._start_search())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        if self._search is not None:
            self._loop.call_soon_threadsafe(self._search.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the admin loop and wait for its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout if timeout is not None else self.client.timeout + 5.0)

    # ------------------------------------------------------------------ discovery
    async def _start_search(self) -> None:
        discovery = self.plugins.make_discovery()
        if not hasattr(discovery, "search"):
            log.warning("discovery plugin %s cannot search for nodes: name them with -n",
                        getattr(discovery, "name", "?"))
            return
        from dispy import config as public  # the original's port and multicast groups

        self._search = discovery.search(secret=self._discovery_secret, node_port=self.node_port,
                                        client_port=self.node_port - 1, on_found=self._found, name="dispyadmin",
                                        hosts=self.hosts, ipv4_group=public.IPv4MulticastGroup,
                                        ipv6_group=public.IPv6MulticastGroup)
        try:
            await self._search.start()
        except OSError as exc:
            log.warning("cannot search for nodes: %s; name them with -n", exc)
            self._search = None
            return
        self._search.ping()

    def ping(self) -> None:
        """Ask the nodes to answer again (nodes started since are found; each node announces itself too)."""
        if self._search is not None:
            self._loop.call_soon_threadsafe(self._search.ping)

    def wait_for_discovery(self, seconds: float = DISCOVERY_WAIT) -> None:
        if self._search is not None:
            threading.Event().wait(seconds)
            if not self.found:
                log.warning("no node answered discovery (%s)", self._search.describe())

    def _found(self, ip_addr: str, port: int, name: str) -> None:
        address = NodeAddress(ip_addr, port)
        with self._lock:
            if address not in self.found and len(self.found) < MAX_NODES:
                log.info("found node %s (%s)", address, name)
            if address in self.found or len(self.found) < MAX_NODES:
                self.found[address] = name

    # ------------------------------------------------------------------ nodes and operations
    @property
    def nodes(self) -> list[NodeAddress]:
        with self._lock:
            return list(dict.fromkeys([*self.named, *self.found]))

    def known(self, text: str) -> NodeAddress:
        """The known node ``text`` names (``host:port``); ValueError otherwise: the page cannot make dispyadmin
        connect anywhere else."""
        address = parse_node(text, self.node_port)
        if address not in self.nodes:
            raise ValueError(f"{text!r} is not one of the nodes dispyadmin administers")
        return address

    def info_all(self) -> list[dict[str, Any]]:
        """Every known node's state, or the reason it could not be had, in the order of ``nodes``."""
        nodes = self.nodes
        results = self.call(self._gather([self.client.info(node) for node in nodes]))
        return [self.describe(node, result) for node, result in zip(nodes, results, strict=True)]

    async def _gather(self, coros: list[Coroutine[Any, Any, m.AdminInfo]]) -> list[m.AdminInfo | BaseException]:
        return await asyncio.gather(*coros, return_exceptions=True)

    def operate(self, node: NodeAddress, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``operation`` (``info``, ``set_cpus``, ``set_service``, ``serve``, ``shutdown``) on ``node``: its
        state after it, or ``error``."""
        method = getattr(self.client, operation, None) if operation in OPERATIONS else None
        if method is None:
            raise ValueError(f"no admin operation {operation!r}; known: {', '.join(OPERATIONS)}")
        try:
            result: m.AdminInfo | BaseException = self.call(method(node, **kwargs))
        except (AdminError, TimeoutError) as exc:
            result = exc
        return self.describe(node, result)

    def describe(self, node: NodeAddress, result: m.AdminInfo | BaseException) -> dict[str, Any]:
        entry: dict[str, Any] = {"node": str(node), "host": node.host, "port": node.port}
        if isinstance(result, m.AdminInfo):
            entry.update({k: v for k, v in asdict(result).items() if k not in ("req_id", "port")})
        else:
            entry["name"] = self.found.get(node, "")
            entry["error"] = str(result) or type(result).__name__
        return entry


OPERATIONS = ("info", "set_cpus", "set_service", "serve", "shutdown")


def summary(entry: dict[str, Any]) -> str:
    """One line for a person: the node and what it is doing, or why it could not be reached."""
    if "error" in entry:
        return f"{entry['node']}: ERROR {entry['error']}"
    state = "accepting jobs" if entry["accepting"] else f"not accepting jobs ({entry['not_accepting']})"
    parts = [f"{entry['node']} {entry['name']}: {entry['cpus']} of {entry['max_cpus']} CPUs, {entry['busy']} busy, "
             f"{entry['jobs_done']} jobs done; {state}"]
    window = [f"{k} {entry['service_' + k]}" for k in ("start", "stop", "end") if entry["service_" + k]]
    if window:
        parts.append(f"service window {', '.join(window)} ({entry['service_state']})")
    if entry["serve"]:
        parts.append(f"serves {entry['serve']} computations ({entry['served']} served)")
    parts.append(f"clients: {'; '.join(entry['clients']) or 'none'}")
    return "; ".join(parts)
