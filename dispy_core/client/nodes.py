"""What a client knows of nodes: ``NodeAllocate`` (which nodes to use), ``DispyNode`` (a node in use),
``DispyNodeAvailInfo`` (its free resources)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from dispy_core.status import NodeStatus


@dataclass(frozen=True)
class DispyNodeAvailInfo:
    """Free resources of a node: CPU % free, memory bytes, disk bytes, swap % free."""

    cpu: float
    memory: int
    disk: int
    swap: float

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> DispyNodeAvailInfo | None:
        if not data:
            return None
        try:
            return cls(float(data["cpu"]), int(data["memory"]), int(data["disk"]), float(data["swap"]))
        except (KeyError, TypeError, ValueError):
            return None


class NodeAllocate:
    """Which nodes a cluster uses and how many of their CPUs; subclass and override ``allocate``."""

    def __init__(self, host: str, port: int | None = None, cpus: int = 0, depends: list[Any] | None = None,
                 setup_args: tuple[Any, ...] = ()) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"NodeAllocate host must be a host name, address or pattern, not {host!r}")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"NodeAllocate port must be an int in 1..65535, not {port!r}")
        if not isinstance(cpus, int):
            raise ValueError(f"NodeAllocate cpus must be an int, not {cpus!r}")
        self.host = host
        self.ip_addr = host
        self.port = port
        self.cpus = cpus
        self.depends = list(depends or [])
        self.setup_args = tuple(setup_args) if isinstance(setup_args, list | tuple) else (setup_args,)

    @property
    def is_pattern(self) -> bool:
        return "*" in self.host or "?" in self.host

    def matches(self, ip_addr: str, name: str = "") -> bool:
        if self.is_pattern:
            return fnmatch.fnmatchcase(ip_addr, self.host) or bool(name and fnmatch.fnmatchcase(name, self.host))
        return self.host in (ip_addr, name)

    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None,
                 platform: str = "") -> int:
        """CPUs to use on this node: the node's count, capped by ``cpus`` (negative: all but that many)."""
        if self.cpus > 0:
            return min(self.cpus, cpus)
        if self.cpus < 0:
            return max(cpus + self.cpus, 0)
        return cpus

    def __repr__(self) -> str:
        return f"NodeAllocate({self.host!r}, port={self.port}, cpus={self.cpus})"


def split_host_port(text: str) -> tuple[str, int | None]:
    """``'host:port'`` and ``'[v6]:port'`` (an extension: the original took host names only) into host and
    port; anything else (a name, an address, ``'::1'``, a pattern) is a host with no port."""
    head, sep, tail = text.rpartition(":")
    if not sep or not tail.isdigit() or not head:
        return text, None
    if ":" in head and not (head.startswith("[") and head.endswith("]")):
        return text, None  # a bare IPv6 address: its last group is not a port
    port = int(tail)
    if not 1 <= port <= 65535:
        raise ValueError(f"node {text!r}: port {port} is not in 1-65535")
    return head.strip("[]"), port


def to_node_allocate(item: Any, default_port: int) -> NodeAllocate:
    """Accept the forms the original did: string, NodeAllocate, dict or tuple."""
    if isinstance(item, NodeAllocate):
        node = item
    elif isinstance(item, str):
        host, port = split_host_port(item)
        node = NodeAllocate(host, port=port)
    elif isinstance(item, dict):
        unknown = set(item) - {"host", "port", "cpus", "depends", "setup_args"}
        if unknown or "host" not in item:
            raise ValueError(f"node dict needs 'host' and may have port, cpus, depends, setup_args: {item!r}")
        node = NodeAllocate(**item)
    elif isinstance(item, tuple) and 1 <= len(item) <= 5:
        node = NodeAllocate(*item)
    else:
        raise ValueError(f"a node must be a host string, NodeAllocate, dict or tuple, not {item!r}")
    if node.port is None:
        node.port = default_port
    return node


class DispyNode:
    """A node as a cluster sees it (passed to ``cluster_status``); read-only for programs."""

    Initialized = NodeStatus.Initialized
    Closed = NodeStatus.Closed
    AvailInfo = NodeStatus.AvailInfo

    def __init__(self, ip_addr: str, port: int, name: str = "", cpus: int = 0) -> None:
        self.ip_addr = ip_addr
        self.port = port
        self.name = name
        self.cpus = cpus
        self.avail_cpus = cpus
        self.busy = 0
        self.jobs_done = 0
        self.cpu_time = 0.0
        self.tx = 0
        self.rx = 0
        self.update_time = 0.0
        self.avail_info: DispyNodeAvailInfo | None = None
        self.platform = ""
        self.reason: str | None = None
        """Why the cluster could not use (or stopped using) this node; None while all is well."""

    @property
    def key(self) -> str:
        return f"{self.ip_addr}:{self.port}"

    def __repr__(self) -> str:
        return f"<DispyNode {self.name or '?'} {self.ip_addr}:{self.port} cpus={self.cpus} busy={self.busy}>"
