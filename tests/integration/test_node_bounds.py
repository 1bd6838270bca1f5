"""Bounds that hold against a flood: connections that never prove the secret, files left half sent.

Measured before: each unauthenticated connection was kept (50 KB in plain TCP, 300 KB with TLS) with no
cap, the node log flooded at the fd limit; an authenticated client could hold any number of half-sent
files open (8 -> 3,008 fds)."""

from __future__ import annotations

import socket
import time

import psutil

import dispy
from dispy_core.node.files import MAX_OPEN_TRANSFERS
from dispy_core.node.server import MAX_UNAUTHENTICATED
from dispy_core.protocol import messages as m
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for


def fds(node: NodeProcess) -> int:
    return psutil.Process(node.proc.pid).num_fds()


def test_connections_that_never_authenticate_are_capped_and_logged_once(node: NodeProcess) -> None:
    baseline = fds(node)
    socks = []
    try:
        for _ in range(3 * MAX_UNAUTHENTICATED):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            socks.append(sock)  # connected, and then silent: no Hello
        time.sleep(1.0)
        assert fds(node) <= baseline + MAX_UNAUTHENTICATED + 16, (fds(node), baseline)
        log = node.log()
        assert "node.max_unauthenticated" in log
        assert log.count("refused connection") <= 3, log[-2000:]  # one line, not one per connection
        assert "Traceback" not in log
    finally:
        for sock in socks:
            sock.close()
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)],
                          recover_file=None) as cluster:
        job = cluster.submit(-3)  # served again at once
        assert job is not None and job(timeout=30) == 3


def test_half_sent_files_are_capped_per_computation(node: NodeProcess) -> None:
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)]) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        [conn] = cluster._life.nodes.values()
        channel = conn.channel
        assert channel is not None
        baseline = fds(node)

        async def flood() -> None:
            for i in range(2 * MAX_OPEN_TRANSFERS):
                await channel.send(m.FileChunk(channel.next_req_id(), cluster.comp_id, f"half-{i}", 10, 0, b"x",
                                               last=False))

        cluster._loop.run(flood())
        wait_for(lambda: any("being received already" in e for e in conn.file_errors.values())
                 or "being received already" in node.log(), timeout=20)
        assert fds(node) <= baseline + MAX_OPEN_TRANSFERS + 8, (fds(node), baseline)
        job = cluster.submit(-5)
        assert job is not None and job(timeout=30) == 5  # the computation still works


def test_a_path_thousands_of_components_deep_is_refused_with_a_reason_not_a_traceback(node: NodeProcess) -> None:
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)]) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        [conn] = cluster._life.nodes.values()
        channel = conn.channel
        assert channel is not None
        deep = "/".join(["d"] * 2000)
        reply = cluster._loop.run(channel.request(
            m.FileChunk(channel.next_req_id(), cluster.comp_id, deep, 1, 0, b"x", last=True), 10))
        assert isinstance(reply, m.FileAck) and not reply.ok and "too long or too deep" in reply.error
        assert "Traceback" not in node.log() and "RecursionError" not in node.log()
