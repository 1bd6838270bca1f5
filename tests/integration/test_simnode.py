"""The simulated node (dispy_core/testing/simnode.py) stays true to the protocol: a real JobCluster, unchanged,
uses a few of them as it uses real nodes, and every result arrives."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import dispy
from dispy_core.testing.simnode import SimNodeProcess, check_loopback, start_simulated_nodes
from dispy_core.testing.waiting import wait_for

SECRET = "simnode-test-secret"


def double_or_fail(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen")
    return x * 2


@pytest.fixture
def sim() -> Iterator[SimNodeProcess]:
    nodes = start_simulated_nodes(3, cpus=2, secret=SECRET)
    yield nodes
    nodes.stop()


def test_jobcluster_gets_every_result_from_simulated_nodes(sim: SimNodeProcess) -> None:
    where = [dispy.NodeAllocate(sim.host, port=port) for port in sim.ports]
    with dispy.JobCluster(double_or_fail, nodes=where, secret=SECRET, host="127.0.0.1",
                          loglevel=logging.WARNING) as cluster:
        jobs = [cluster.submit(i) for i in range(300)]
        assert cluster.wait(timeout=60)
        for i, job in enumerate(jobs):
            assert job is not None
            if i == 13:  # a job that raised comes back as a real node reports it
                assert job.status == dispy.DispyJob.Terminated and "thirteen" in (job.exception or "")
            else:
                assert job.status == dispy.DispyJob.Finished, job.exception
                assert job.result == 2 * i
        status = cluster.status()
        assert len(status["nodes"]) == 3 and not status["failed_nodes"], status
    assert sim.stop() == 0
    assert sim.stats["jobs"] == 300 and sim.stats["failed_jobs"] == 1
    assert sim.stats["computations"] == 3
    assert sorted(int(p) for p in sim.stats["by_port"]) == sorted(sim.ports)  # each node ran jobs


def test_simulated_node_refuses_a_client_without_the_secret(sim: SimNodeProcess) -> None:
    with dispy.JobCluster(double_or_fail, nodes=[dispy.NodeAllocate(sim.host, port=sim.ports[0])], secret="wrong",
                          host="127.0.0.1", loglevel=logging.CRITICAL) as cluster:
        failed = wait_for(lambda: cluster.status()["failed_nodes"], timeout=30)
        assert any("authentication" in why for why in failed.values()), failed
        assert not cluster.status()["nodes"]
    sim.stop()
    assert sim.stats["connections"] == 0 and sim.stats["jobs"] == 0


def test_only_loopback_is_served() -> None:
    assert check_loopback("127.0.0.5") == "127.0.0.5"
    for host in ("0.0.0.0", "192.0.2.1", "localhost-ish", ""):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)
