"""Which NodeAllocate entry governs a found node (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from dispy_core.client.allocation import choose_alloc, is_plain, parse_nodes
from dispy_core.client.nodes import DispyNode, NodeAllocate


class Custom(NodeAllocate):
    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None,
                 platform: str = "") -> int:
        return 1


def test_parse_forms_and_plainness() -> None:
    entries = parse_nodes(["a", ("b", 9000), {"host": "c", "cpus": 2}, NodeAllocate("d", setup_args=(1,)),
                           Custom("e"), DispyNode("10.0.0.1", 9001)], 9701)
    assert [e.alloc.host for e in entries] == ["a", "b", "c", "d", "e", "10.0.0.1"]
    assert [e.alloc.port for e in entries] == [9701, 9000, 9701, 9701, 9701, 9001]
    assert [e.plain for e in entries] == [True, True, False, False, False, True]
    assert parse_nodes("solo", 1)[0].alloc.host == "solo" and parse_nodes(None, 1) == []
    assert not is_plain(NodeAllocate("x", depends=["f"]))
    with pytest.raises(ValueError):
        parse_nodes([{"hots": "typo"}], 1)


def test_specific_entries_win_over_wildcards_and_plain_ones_yield() -> None:
    entries = parse_nodes(["10.0.0.1", NodeAllocate("10.0.0.*", cpus=1), NodeAllocate("10.0.0.2", cpus=4),
                           NodeAllocate("10.0.0.3", port=9800, cpus=3)], 9701)
    plain, wildcard, specific, other_port = (e.alloc for e in entries)
    assert choose_alloc(entries, "10.0.0.1", 9701, "n1", entries[0]) is wildcard  # plain: the wildcard governs
    assert choose_alloc(entries, "10.0.0.2", 9701, "n2", None) is specific
    assert choose_alloc(entries, "10.0.0.2", 9701, "n2", entries[1]) is specific
    assert choose_alloc(entries, "10.0.0.3", 9701, "n3", None) is wildcard  # other port: not that entry
    assert choose_alloc(entries, "10.0.0.3", 9800, "n3", None) is other_port
    assert choose_alloc(entries, "10.1.0.1", 9701, "n4", None) is None
    assert choose_alloc(entries, "10.0.0.9", 9701, "n5", entries[3]) is other_port  # found through it
    via = parse_nodes(["10.1.0.1"], 9701)[0]
    assert choose_alloc(entries, "10.1.0.1", 9701, "n6", via) is via.alloc  # discover_nodes, nothing matches
    assert plain.host == "10.0.0.1"


def test_wildcard_matches_names_too() -> None:
    entries = parse_nodes([NodeAllocate("worker-*", cpus=2)], 9701)
    assert choose_alloc(entries, "10.0.0.1", 9701, "worker-7", None) is entries[0].alloc
    assert choose_alloc(entries, "10.0.0.1", 9701, "db-1", None) is None


def test_default_allocate() -> None:
    assert NodeAllocate("h").allocate(None, "ip", "n", 8) == 8
    assert NodeAllocate("h", cpus=2).allocate(None, "ip", "n", 8) == 2
    assert NodeAllocate("h", cpus=-3).allocate(None, "ip", "n", 8) == 5
    assert NodeAllocate("h", cpus=-9).allocate(None, "ip", "n", 8) == 0


@pytest.mark.parametrize(("text", "host", "port"), [
    ("node7", "node7", 9701), ("node7:9801", "node7", 9801), ("10.0.0.5:40000", "10.0.0.5", 40000),
    ("::1", "::1", 9701), ("[::1]:9801", "::1", 9801), ("fe80::1", "fe80::1", 9701),
    ("2001:db8::1:9801", "2001:db8::1:9801", 9701), ("10.0.*", "10.0.*", 9701)])
def test_a_node_string_may_carry_its_port(text: str, host: str, port: int) -> None:
    from dispy_core.client.nodes import to_node_allocate

    alloc = to_node_allocate(text, 9701)
    assert (alloc.host, alloc.port) == (host, port)


@pytest.mark.parametrize("text", ["node7:0", "node7:70000"])
def test_a_node_string_with_a_bad_port_is_refused_with_its_name(text: str) -> None:
    from dispy_core.client.nodes import to_node_allocate

    with pytest.raises(ValueError, match=text):
        to_node_allocate(text, 9701)
