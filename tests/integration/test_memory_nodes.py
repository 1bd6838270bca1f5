"""Many nodes in one process: real NodeServers and a real JobCluster over the kit's MemoryTransport.

No packet is sent: the addresses name endpoints of a MemoryNetwork. The jobs still run in real
processes (each node's fork executor), and the scheduler spreads them over every node.
"""

from __future__ import annotations

from pathlib import Path

import dispy
from dispy_core.node.server import NodeOptions, NodeServer
from dispy_core.testing import MemoryNetwork, MemoryTransport, MemoryTransportPlugin
from dispy_core.testing.waiting import wait_for

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
SECRET = "memory-secret"


def where(n: int) -> tuple[int, str]:
    import socket
    import time

    time.sleep(0.05)
    return n * n, socket.gethostname()


def test_a_cluster_spreads_jobs_over_simulated_nodes(tmp_path: Path) -> None:
    network = MemoryNetwork()
    cluster = dispy.JobCluster(where, nodes=HOSTS, secret=SECRET, plugins=[MemoryTransportPlugin(network)])
    servers: list[NodeServer] = []
    try:
        wait_for(lambda: len(cluster.status()["failed_nodes"]) == len(HOSTS), timeout=20)  # none listens yet
        for host in HOSTS:
            server = NodeServer(NodeOptions(host=host, port=cluster.node_port, cpus=1, name=f"sim-{host}",
                                            secret=SECRET, dest_path_prefix=str(tmp_path / host)))
            server.transport = MemoryTransport(network, host=host)
            cluster._loop.run(server.start(), timeout=20)
            servers.append(server)
        assert [cluster.allocate_node(host) for host in HOSTS] == [0, 0, 0]
        jobs = [cluster.submit(i) for i in range(24)]
        assert cluster.wait(timeout=120)
        assert [job.result[0] for job in jobs if job is not None] == [i * i for i in range(24)]
        assert {job.ip_addr for job in jobs if job is not None} == set(HOSTS)  # every node got work
        assert sum(server.jobs_done for server in servers) == 24
    finally:
        for server in servers:
            cluster._loop.run(server.stop(), timeout=30)
        cluster.close(timeout=10, terminate=True)
