"""A live but quiet client answers the node's pings, so --zombie_interval does not drop it."""

from __future__ import annotations

from collections.abc import Callable

import dispy
from dispy_core.testing.nodes import NodeProcess


def slow(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_quiet_client_survives_zombie_interval(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("--zombie_interval", "0.02")  # 1.2 s of silence would mark the client dead
    with dispy.JobCluster(slow, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit(3.5)
        assert job is not None
        assert job(timeout=30) == 3.5
        assert job.status == dispy.DispyJob.Finished
    assert "presumed dead" not in node.log().lower()
