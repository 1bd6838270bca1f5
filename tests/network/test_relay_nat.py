"""Discovery across networks, for real: subnets of network namespaces joined by a router namespace
(``Lab.add_subnet`` / ``add_router``), through which no broadcast passes. A ``dispynetrelay`` on the far
subnet brings a client's pings to its nodes; a client behind NAT (MASQUERADE in the router) finds and
uses nodes outside, the answers coming back through the NAT's mappings; a node behind NAT is reached
through a port forward and says so with ``--ext_host``; a node with ``--scheduler_node`` announces itself
across the router to a client that starts after it. Every process is real (``ip netns exec``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lanhosts import SECRET, env_without_loopback_only, start_node

from dispy_core.testing.netns import Host, Lab, Subnet, nat_tool

NODE_PORT = 9701

CLIENT = """
import json, sys, time
import dispy

def compute(n):
    return n * n, dispy_node_name

options, want, jobs, wait = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cluster = dispy.JobCluster(compute, secret=sys.argv[5], **options)
deadline = time.monotonic() + wait
while len(cluster.status()["nodes"]) < want and time.monotonic() < deadline:
    time.sleep(0.1)
found = sorted([n.name, n.ip_addr] for n in cluster.status()["nodes"])
results = []
if found:
    submitted = [cluster.submit(i) for i in range(jobs)]
    cluster.wait(timeout=60)
    results = [[j.status, j.result[0] if j.result else None, j.result[1] if j.result else None] for j in submitted]
print(json.dumps({"found": found, "results": results}))
cluster.close()
"""

PROBE = """
import asyncio, json, sys
from dispy_plugins.discovery_udp.discovery import UdpDiscovery

async def main():
    found = []
    search = UdpDiscovery().search(secret=sys.argv[1], node_port=9701, client_port=9700,
                                   on_found=lambda ip, port, name: found.append([ip, port, name]))
    await search.start()
    search.unicast.update((host, 9701) for host in sys.argv[2:])
    for _ in range(3):
        search.ping()
        await asyncio.sleep(0.4)
    search.close()
    print(json.dumps(sorted(set(map(tuple, found)))))

asyncio.run(main())
"""
"""A client's search alone: pings by broadcast on its subnet and by unicast the hosts given; prints what
answered (address, port, name), as the node (or the relay) said it."""


def run_client(host: Host, options: dict[str, Any], want: int, jobs: int, wait: float) -> dict[str, Any]:
    """The client program on ``host``: waits up to ``wait`` s for ``want`` nodes, then runs ``jobs`` jobs."""
    proc = subprocess.run(host.argv(sys.executable, "-c", CLIENT, json.dumps(options), str(want), str(jobs),
                                    str(wait), SECRET),
                          capture_output=True, text=True, timeout=120, env=env_without_loopback_only())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["log"] = proc.stderr
    return result


def probe(host: Host, *targets: str) -> list[list[Any]]:
    proc = subprocess.run(host.argv(sys.executable, "-c", PROBE, SECRET, *targets), capture_output=True, text=True,
                          timeout=60, env=env_without_loopback_only())
    assert proc.returncode == 0, proc.stderr[-3000:]
    found: list[list[Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def start_relay(host: Host, log_path: Path, *extra: str) -> subprocess.Popen[Any]:
    """``dispynetrelay`` on ``host`` (every address, default ports), once it says it is ready."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = host.popen([sys.executable, "-m", "dispy_core.relay.cli", "--daemon", "-s", SECRET, *extra],
                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env_without_loopback_only())
    deadline = time.monotonic() + 30
    while b"dispynetrelay ready" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"dispynetrelay did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[Any], log_path: Path) -> str:
    """SIGTERM: the relay must stop cleanly (exit 0) and say what it passed on."""
    proc.terminate()
    assert proc.wait(10) == 0, log_path.read_text()
    return log_path.read_text()


def relay_counts(log: str) -> tuple[int, int]:
    """Pings relayed and replies passed on, from the line the relay logs when it stops."""
    found = re.search(r"(\d+) pings relayed, (\d+) replies passed on", log)
    assert found is not None, log
    return int(found[1]), int(found[2])


def two_subnets(lab: Lab) -> tuple[Subnet, Subnet, Host]:
    """The lab's first subnet ("a"), a second one ("b"), and a router with a leg on each (.1 on both)."""
    a, b = lab.subnets["lan"], lab.add_subnet("b")
    return a, b, lab.add_router("router", a, b)


def needs_nat() -> None:
    if nat_tool() is None:
        pytest.skip("NAT tests need nft or iptables (neither is installed)")


def assert_jobs_ran(outcome: dict[str, Any], jobs: int, names: set[str]) -> None:
    assert [r[1] for r in outcome["results"]] == [n * n for n in range(jobs)], outcome["log"][-3000:]
    assert {r[2] for r in outcome["results"]} == names, outcome["results"]


@pytest.mark.timeout(120)
def test_a_relay_brings_a_clients_pings_to_the_nodes_of_another_subnet(lab: Lab, tmp_path: Path) -> None:
    a, b, router = two_subnets(lab)
    client = lab.add_host("client", a)
    client.add_route(b, router.address_on(a))
    relay_host, n1, n2 = (lab.add_host(name, b) for name in ("relay", "n1", "n2"))
    for host in (relay_host, n1, n2):
        host.add_route(a, router.address_on(b))
    for host in (n1, n2):
        start_node(host, host.name, tmp_path / host.name)
    options = {"nodes": [b.pattern, relay_host.addr]}

    alone = run_client(client, options, want=2, jobs=4, wait=2.0)  # no relay yet: no broadcast crosses
    assert alone["found"] == [], alone["log"][-3000:]

    relay = start_relay(relay_host, tmp_path / "relay.log")
    outcome = run_client(client, options, want=2, jobs=12, wait=20.0)
    assert outcome["found"] == [["n1", n1.addr], ["n2", n2.addr]], outcome["log"][-3000:]
    assert_jobs_ran(outcome, 12, {"n1", "n2"})
    log = stop(relay, tmp_path / "relay.log")
    assert f"passing on the pings of {client.addr}:" in log, log
    pings, replies = relay_counts(log)
    assert pings >= 1 and replies >= 2 * pings, log  # both nodes answered each ping


@pytest.mark.timeout(120)
def test_a_client_behind_nat_uses_nodes_outside_named_and_found_through_a_relay(lab: Lab, tmp_path: Path) -> None:
    needs_nat()
    private, public, router = two_subnets(lab)
    router.masquerade(public)  # no port forward: only what the client starts comes back
    client = lab.add_host("client", private)
    client.add_route(public, router.address_on(private))
    n1, n2 = lab.add_host("n1", public), lab.add_host("n2", public)
    assert f"{private.prefix}." not in n1.run("ip", "route").stdout  # no way back but the NAT
    for host in (n1, n2):
        start_node(host, host.name, tmp_path / host.name)

    # a ping to a node named by address: its reply comes back through the NAT's UDP mapping
    assert probe(client, n1.addr) == [[n1.addr, NODE_PORT, "n1"]]

    # the relay beside n1's node: it hears the pings sent to n1's address, the node keeps the broadcasts.
    # n1 named (TCP through the NAT); n2 by pattern only, found by the relay's ping and passed back
    relay = start_relay(n1, tmp_path / "relay.log", "-d")
    outcome = run_client(client, {"nodes": [n1.addr, public.pattern]}, want=2, jobs=10, wait=20.0)
    assert outcome["found"] == [["n1", n1.addr], ["n2", n2.addr]], outcome["log"][-3000:]
    assert_jobs_ran(outcome, 10, {"n1", "n2"})
    log = stop(relay, tmp_path / "relay.log")
    assert f"passing on the pings of {router.address_on(public)}:" in log, log  # the client, as NATed
    for name, host in (("n1", n1), ("n2", n2)):  # n1's node, beside the relay, heard its broadcasts too
        assert f"passed on the reply of node {name} ({host.addr}) to {router.address_on(public)}:" in log, log


@pytest.mark.timeout(120)
def test_a_node_behind_nat_is_reached_through_a_port_forward_at_its_ext_host(lab: Lab, tmp_path: Path) -> None:
    needs_nat()
    private, public, router = two_subnets(lab)
    outside = router.address_on(public)
    node = lab.add_host("n1", private)
    node.add_route(public, router.address_on(private))
    router.masquerade(public)
    router.forward_port(public, NODE_PORT, node.addr)  # TCP and UDP
    client = lab.add_host("client", public)  # no route to the private subnet
    start_node(node, "n1", tmp_path / "n1", "--ext_host", outside)

    assert probe(client, outside) == [[outside, NODE_PORT, "n1"]]  # it answers with its ext_host
    outcome = run_client(client, {"nodes": [outside]}, want=1, jobs=6, wait=15.0)
    assert outcome["found"] == [["n1", outside]], outcome["log"][-3000:]
    assert_jobs_ran(outcome, 6, {"n1"})


@pytest.mark.timeout(120)
def test_a_node_announces_itself_across_networks_to_its_scheduler_node_until_it_connects(
        lab: Lab, tmp_path: Path) -> None:
    a, b, router = two_subnets(lab)
    client, node = lab.add_host("client", a), lab.add_host("n1", b)
    client.add_route(b, router.address_on(a))
    node.add_route(a, router.address_on(b))
    start_node(node, "n1", tmp_path / "n1", "--scheduler_node", client.addr)
    time.sleep(2.5)  # its announcements at start found no client: it must keep trying
    outcome = run_client(client, {"nodes": [b.pattern]}, want=1, jobs=4, wait=30.0)
    assert outcome["found"] == [["n1", node.addr]], outcome["log"][-3000:]
    assert_jobs_ran(outcome, 4, {"n1"})  # its pings do not cross the router (the relay test shows it)
