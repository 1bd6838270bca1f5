"""An original dispy program that names no nodes runs unchanged on a LAN: three hosts (a client and two
nodes) in network namespaces on one bridge, found by broadcast, by IPv4 multicast and over IPv6."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lanhosts import run_client, start_node

from dispy_core.testing.netns import Lab


def lan(lab: Lab, tmp_path: Path, *node_args: str) -> tuple[list[str], list[str]]:
    """Two nodes on the lab's LAN; their names and addresses."""
    names, addrs = [], []
    for name in ("n1", "n2"):
        host = lab.add_host(name)
        start_node(host, name, tmp_path / name, *node_args)
        names.append(name)
        addrs.append(host.addr)
    return names, addrs


@pytest.mark.timeout(120)
def test_nodes_are_found_by_broadcast(lab: Lab, tmp_path: Path) -> None:
    names, addrs = lan(lab, tmp_path)
    client = lab.add_host("client")
    outcome = run_client(client, {}, want_nodes=2, jobs=20)  # JobCluster(compute): nodes default to '*'
    assert outcome["found"] == [[name, addr] for name, addr in zip(names, addrs, strict=True)], outcome["log"]
    assert [r[1] for r in outcome["results"]] == [n * n for n in range(20)]
    assert {r[2] for r in outcome["results"]} == set(names)  # both nodes ran jobs


@pytest.mark.timeout(120)
def test_nodes_are_found_by_ipv4_multicast(lab: Lab, tmp_path: Path) -> None:
    names, _ = lan(lab, tmp_path, "--ipv4_udp_multicast")
    client = lab.add_host("client")
    outcome = run_client(client, {"ipv4_udp_multicast": True, "nodes": ["10.231.*"]}, want_nodes=2, jobs=10)
    assert [found[0] for found in outcome["found"]] == names, outcome["log"]
    assert [r[1] for r in outcome["results"]] == [n * n for n in range(10)]


@pytest.mark.timeout(120)
def test_a_pattern_that_matches_no_node_uses_none_and_says_what_it_tried(lab: Lab, tmp_path: Path) -> None:
    lan(lab, tmp_path)
    client = lab.add_host("client")
    # safe: a pattern only matched, never contacted; the client runs in the lab's own namespace
    # want_nodes=0: no wait for a node that cannot come (the job itself waits first_node_timeout)
    outcome = run_client(client, {"nodes": ["192.168.77.*"], "first_node_timeout": 4},  # safe: lab namespace
                         want_nodes=0, jobs=1)
    assert outcome["found"] == []
    assert outcome["results"][0][0] == 10  # Abandoned, with the reason
    assert "pinged" in outcome["log"] and "via eth0" in outcome["log"], outcome["log"]


@pytest.mark.timeout(120)
def test_nodes_are_found_and_used_over_ipv6(lab: Lab, tmp_path: Path) -> None:
    hosts = []
    for name in ("n1", "n2", "client"):
        host = lab.add_host(name)
        v6 = f"fd00:231:{lab.index}::{len(hosts) + 10}"
        subprocess.run(host.argv("ip", "addr", "add", f"{v6}/64", "dev", host.link, "nodad"), check=True,
                       capture_output=True, timeout=30)
        hosts.append((host, v6))
    for (host, _), name in zip(hosts[:2], ("n1", "n2"), strict=False):
        start_node(host, name, tmp_path / name)
    client, client_v6 = hosts[2]
    outcome = run_client(client, {"host": client_v6}, want_nodes=2, jobs=10)  # discovery on IPv6 only
    assert outcome["found"] == [["n1", hosts[0][1]], ["n2", hosts[1][1]]], outcome["log"]
    assert [r[1] for r in outcome["results"]] == [n * n for n in range(10)]


@pytest.mark.timeout(120)
def test_a_node_started_after_the_client_announces_itself_and_is_used(lab: Lab, tmp_path: Path) -> None:
    import json
    import sys
    import time

    from lanhosts import CLIENT, SECRET, env_without_loopback_only

    node_host, client = lab.add_host("n1"), lab.add_host("client")
    proc = subprocess.Popen(client.argv(sys.executable, "-c", CLIENT, "{}", "1", "5", SECRET), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_without_loopback_only())
    time.sleep(3.0)  # the client's pings went unanswered
    start_node(node_host, "late", tmp_path / "late")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["found"] == [["late", node_host.addr]], err
    assert [r[1] for r in outcome["results"]] == [n * n for n in range(5)]
    assert "no node answered discovery" in err  # said while waiting, with what it tried
