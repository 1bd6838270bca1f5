"""dispyscheduler's options beyond the basics, and SharedJobCluster(nodes=), with real dispyscheduler and
dispynode processes on loopback: --config/--save_config, the client's nodes=, --cooperative and
set_node_cpus, --ext_host, --ping_interval."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.scheduler import SchedulerProcess, free_scheduler_base, start_scheduler

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


# --------------------------------------------------------------------------- SharedJobCluster(nodes=)
def test_client_nodes_pick_among_the_schedulers_nodes(three_nodes: list[NodeProcess],
                                                      scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(three_nodes)
    # By name, and by address and port with a cap of 1 CPU: node0 is not used.
    picked = shared(scheduler, where, nodes=["node1", dispy.NodeAllocate("127.0.0.1", port=three_nodes[2].port,
                                                                          cpus=1)])
    wildcard = shared(scheduler, where, nodes=["nod?0"])  # a wildcard matching node0's name only
    everyone = shared(scheduler, where)
    try:
        ran: dict[dispy.SharedJobCluster, set[str]] = {}
        # picked and wildcard at once (their nodes apart), then everyone (else the policy may rightly give it
        # none of node0, which wildcard's earlier jobs fill)
        for group in ((picked, wildcard), (everyone,)):
            jobs = {c: [c.submit(i) for i in range(24)] for c in group}
            for c, js in jobs.items():
                ran[c] = {job()[1] for job in js if job is not None}  # type: ignore[index]
        assert ran[picked] == {"node1", "node2"}
        assert ran[wildcard] == {"node0"}
        assert ran[everyone] == {"node0", "node1", "node2"}
        assert picked.status()["nodes"][0].cpus == 3  # 2 of node1, 1 of node2: the client pipelines for 3
    finally:
        for cluster in (picked, wildcard, everyone):
            assert cluster.close(timeout=30)
    log = scheduler.log()
    assert "set up with 3 CPUs on 2 nodes" in log and "set up with 2 CPUs on 1 nodes" in log
    assert "set up with 6 CPUs on 3 nodes" in log


def test_client_nodes_matching_none_end_its_jobs_with_the_reason(
        three_nodes: list[NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(three_nodes)
    cluster = shared(scheduler, where, nodes=["10.9.9.9", "elsewhere-*"])
    try:
        job = cluster.submit(1)
        assert job is not None and job() is None
        assert job.status == dispy.DispyJob.Abandoned
        assert "match none of the scheduler's" in (job.exception or ""), job.exception
        assert "(node0)" in (job.exception or "")  # it says which nodes the scheduler has
    finally:
        cluster.close(timeout=10)


# --------------------------------------------------------------------------- --cooperative: set_node_cpus
def span(seconds: float) -> tuple[float, float]:
    import time

    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def overlaps(spans: list[tuple[float, float]]) -> int:
    """The most jobs that ran at once."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_cooperative_scheduler_lets_a_client_change_a_nodes_cpus_for_everyone(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    node = node_factory("-c", "2", "--name", "node0", secret=NODE_SECRET)
    scheduler = scheduler_factory([node], "--cooperative")
    first = shared(scheduler, span)
    second = None
    try:
        job = first.submit(0.01)
        assert job is not None and job() is not None  # set up on the node
        assert first.set_node_cpus("no-such-node", 1) == -1
        assert first.set_node_cpus("node0", -2) == -1  # leaves none
        assert first.set_node_cpus("node0", 1) == 1
        scheduler.wait_log("1 of its 2 CPUs used from now on")
        second = shared(scheduler, span)  # set up after the change: the limit holds for it too
        jobs = [cluster.submit(0.3) for cluster in (first, second) for _ in range(3)]
        spans = [job() for job in jobs if job is not None]
        assert len(spans) == 6 and overlaps(spans) == 1, spans  # one CPU of the node, for both computations
        assert first.set_node_cpus(f"{node.host}:{node.port}", 0) == 2  # all of them again
        jobs = [first.submit(0.5) for _ in range(4)]
        spans = [job() for job in jobs if job is not None]
        assert overlaps(spans) == 2, spans
    finally:
        for cluster in (first, second):
            if cluster is not None:
                assert cluster.close(timeout=30)


def test_set_node_cpus_without_cooperative_is_refused_with_the_reason(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess],
        caplog: pytest.LogCaptureFixture) -> None:
    node = node_factory("-c", "2", "--name", "node0", secret=NODE_SECRET)
    scheduler = scheduler_factory([node])
    cluster = shared(scheduler, span)
    try:
        job = cluster.submit(0.01)
        assert job is not None and job() is not None
        with caplog.at_level("WARNING", logger="dispy"):
            assert cluster.set_node_cpus("node0", 1) == -1
        assert "not started with --cooperative" in caplog.text
        assert "refused" in scheduler.wait_log("not started with --cooperative")
    finally:
        assert cluster.close(timeout=30)


# --------------------------------------------------------------------------- --ping_interval, --ext_host
@pytest.mark.parametrize(("interval", "expected"), [("1", range(2, 6)), (None, range(0, 1))])
def test_ping_interval_pings_for_nodes_while_a_computation_is_open(
        scheduler_factory: Callable[..., SchedulerProcess], interval: str | None, expected: range) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):  # the nodes' UDP port (base + 1), where no node answers: only the pings are counted
        base = free_scheduler_base()
        try:
            listener.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            continue
    listener.settimeout(0.2)
    try:
        options = ["--ping_interval", interval] if interval else []
        scheduler = scheduler_factory([], *options, "--ext_host", "gateway.example", base_port=base)
        assert "--ext_host gateway.example: not needed here" in scheduler.log()
        cluster = shared(scheduler, where)  # no node answers: set up with none, its jobs would wait
        try:
            scheduler.wait_log("no node ready yet")
            while True:  # what the first search sent
                try:
                    listener.recv(4096)
                except TimeoutError:
                    break
            pings, deadline = 0, time.monotonic() + 3.5
            while time.monotonic() < deadline:
                try:
                    listener.recv(4096)
                    pings += 1
                except TimeoutError:
                    pass
            assert pings in expected, pings  # about one a second after the first search ended; else none
        finally:
            cluster.close(timeout=10)
    finally:
        listener.close()
