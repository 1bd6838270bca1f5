"""dispy.config and the job-side logger against real dispynode processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]


def logs(x: int) -> int:
    dispynode_logger.warning("job says hello %d", x)  # type: ignore[name-defined] # noqa: F821
    return x


def test_dispy_port_from_config_and_from_the_cluster(node: NodeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispy.config, "DispyPort", node.base_port)
    assert dispy.config.port(dispy.config.NodePort) == node.port == dispy.config.node_port()
    with dispy.JobCluster(logs, nodes=["127.0.0.1"]) as cluster:  # no dispy_port: the config's
        assert cluster.node_port == node.port
        job = cluster.submit(1)
        assert job is not None and job(timeout=20) == 1
    monkeypatch.setattr(dispy.config, "DispyPort", 9700)
    with dispy.JobCluster(logs, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        assert cluster.node_port == node.port
        job = cluster.submit(2)
        assert job is not None and job(timeout=20) == 2


def test_config_msg_timeout_is_the_default(monkeypatch: pytest.MonkeyPatch, node: NodeProcess) -> None:
    monkeypatch.setattr(dispy.config, "MsgTimeout", 3)
    with dispy.JobCluster(logs, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        assert cluster.config.msg_timeout == 3
    with dispy.JobCluster(logs, nodes=["127.0.0.1"], dispy_port=node.base_port, msg_timeout=7) as cluster:
        assert cluster.config.msg_timeout == 7


def test_config_constants_of_the_original() -> None:
    assert dispy.config.DispyPort == 9700 and dispy.config.port(dispy.config.ClientPort) == 9700
    assert dispy.config.port(dispy.config.SharedSchedulerPort) == 9702
    assert dispy.config.HTTPServerPort == 8181 and dispy.config.MaxFileSize == 0
    assert dispy.config.IPv4MulticastGroup and dispy.config.IPv6MulticastGroup
    assert dispy.config.port("DispyPort + 1", 5000) == 5001
    with pytest.raises(ValueError):
        dispy.config.port("DispyPort * 2")


def test_dispynode_logger_in_jobs(node: NodeProcess) -> None:
    with dispy.JobCluster(logs, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit(42)
        assert job is not None and job(timeout=20) == 42, job.exception
        assert "job says hello" not in str(job.stderr) + str(job.stdout)  # the node's log, not the job's output
    deadline = time.monotonic() + 5
    while "job says hello 42" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "job says hello 42" in node.log()
