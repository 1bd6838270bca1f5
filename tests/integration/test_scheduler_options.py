"""dispyscheduler's options beyond the basics, and SharedJobCluster(nodes=), with real dispyscheduler and
dispynode processes on loopback: --config/--save_config, the client's nodes=, --cooperative and
set_node_cpus, --ext_host, --ping_interval."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.scheduler import SchedulerProcess, start_scheduler

NODE_SECRET, CLUSTER_SECRET = "node-secret-xyz", "cluster-secret-xyz"


def where(n: int) -> tuple[int, str]:
    import time

    time.sleep(0.05)
    return n, dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected by the node


@pytest.fixture
def scheduler_factory(tmp_path: Path) -> Iterator[Callable[..., SchedulerProcess]]:
    """Start real dispyscheduler processes; each is stopped (by PID) after the test."""
    started: list[SchedulerProcess] = []

    def factory(nodes: list[NodeProcess], *args: str, **kwargs: Any) -> SchedulerProcess:
        kwargs.setdefault("prefix", tmp_path / f"scheduler{len(started)}")
        kwargs["prefix"].mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("cluster_secret", CLUSTER_SECRET)
        kwargs.setdefault("node_secret", NODE_SECRET)
        scheduler = start_scheduler(nodes, args, **kwargs)
        started.append(scheduler)
        return scheduler

    yield factory
    for scheduler in started:
        scheduler.stop()


@pytest.fixture
def three_nodes(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    return [node_factory("-c", "2", "--name", f"node{i}", secret=NODE_SECRET) for i in range(3)]


def shared(scheduler: SchedulerProcess, computation: Any, **kwargs: Any) -> dispy.SharedJobCluster:
    kwargs.setdefault("secret", CLUSTER_SECRET)
    return dispy.SharedJobCluster(computation, scheduler_node=scheduler.host, scheduler_port=scheduler.port,
                                  **kwargs)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispy_core.scheduler.cli", *args], capture_output=True, text=True,
                          timeout=60)


# --------------------------------------------------------------------------- --config / --save_config
def test_save_config_omits_secrets_and_the_command_line_overrides_the_file(
        three_nodes: list[NodeProcess], tmp_path: Path, scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    saved = tmp_path / "scheduler.json"
    node = three_nodes[0]
    proc = run_cli("-n", f"{node.host}:{node.port}", "--name", "from-file", "--zombie_interval", "7",
                   "--fair_cluster_scheduler", "--node_secret", "very-secret-1", "--cluster_secret", "very-secret-2",
                   "--save_config", str(saved))
    assert proc.returncode == 0, proc.stderr
    text = saved.read_text()
    assert "very-secret" not in text and "not saved" in text
    data = json.loads(text)
    assert data["node"] == [f"{node.host}:{node.port}"] and data["name"] == "from-file"
    assert data["zombie_interval"] == 7.0 and data["policy"] == "fair_cluster"
    assert "node_secret" not in data and "cluster_secret" not in data
    # The file's node and policy, the command line's name and policy: the command line wins.
    scheduler = scheduler_factory([], "--config", str(saved), "--name", "from-cli", "--policy", "early_cluster")
    log = scheduler.log()
    assert "dispyscheduler from-cli serving" in log and "policy: early_cluster" in log, log
    assert f"nodes: {node.host}:{node.port}" in log
    cluster = shared(scheduler, where)
    try:
        jobs = [cluster.submit(i) for i in range(4)]
        assert {job()[1] for job in jobs if job is not None} == {"node0"}  # type: ignore[index]
    finally:
        assert cluster.close(timeout=30)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"port": "abc"}', "invalid int value"),
    ('{"no_such_option": 1}', "unknown option"),
    ('{"cooperative": "yes"}', "must be true or false"),
    ('{"pulse_interval": 0}', "--pulse_interval must be between 1 and 600"),
])
def test_bad_config_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    proc = run_cli("-i", "127.0.0.1", "--config", str(path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
