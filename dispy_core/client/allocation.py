"""Which ``NodeAllocate`` entry governs a node the cluster found: specific entries before wildcards."""

from __future__ import annotations

from typing import Any

from dispy_core.client.nodes import DispyNode, NodeAllocate, to_node_allocate


class NodeEntry:
    """A node to look for, and whether it was named plainly: only where it is (host, port), no settings
    of its own (CPUs, depends, setup_args, an ``allocate`` of a subclass)."""

    def __init__(self, alloc: NodeAllocate, plain: bool) -> None:
        self.alloc = alloc
        self.plain = plain


def parse_nodes(items: Any, default_port: int) -> list[NodeEntry]:
    """The ``nodes=`` forms (string, NodeAllocate, dict, tuple, DispyNode, or a list of them) as entries."""
    if items is None:
        return []
    if not isinstance(items, list | set | frozenset):
        items = [items]
    entries = []
    for item in items:
        if isinstance(item, DispyNode):
            entries.append(NodeEntry(NodeAllocate(item.ip_addr, port=item.port), plain=True))
        else:
            alloc = to_node_allocate(item, default_port)
            entries.append(NodeEntry(alloc, plain=is_plain(alloc)))
    return entries


def is_plain(alloc: NodeAllocate) -> bool:
    """Says only where a node is: a wildcard's settings may then govern it."""
    return type(alloc) is NodeAllocate and not alloc.cpus and not alloc.depends and not alloc.setup_args


def choose_alloc(entries: list[NodeEntry], ip_addr: str, port: int, name: str,
                 via: NodeEntry | None) -> NodeAllocate | None:
    """The entry governing a node at ``ip_addr:port`` called ``name``, found through ``via``.

    A plain host string only says where to look; entries with settings say how to use a node.
    Precedence: ``via`` itself when it has settings; a cluster entry with settings naming the node's
    address or name (and port); the first cluster wildcard matching it; ``via`` as a plain host.
    None: the node is not used.
    """
    if via is not None and not via.plain and not via.alloc.is_pattern:
        return via.alloc
    for entry in entries:
        alloc = entry.alloc
        if not entry.plain and not alloc.is_pattern and alloc.host in (ip_addr, name) \
                and alloc.port in (None, port):
            return alloc
    for entry in entries:
        if entry.alloc.is_pattern and entry.alloc.matches(ip_addr, name):
            return entry.alloc
    return via.alloc if via is not None else None
