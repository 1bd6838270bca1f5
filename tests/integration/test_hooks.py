"""Hooks exercised end to end: plugins on the client (objects) and on the node (installed extras)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dispy
from dispy_core.hookspecs import hookimpl
from dispy_core.testing.nodes import NodeProcess


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected by the node


class Recorder:
    """A client-side plugin that records every notification and allocates one CPU per node."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_changes: list[tuple[int | None, int]] = []
        self.node_changes: list[Any] = []
        self.pulses: list[dict[str, Any]] = []

    @hookimpl
    def dispy_allocate(self, cluster: Any, node: Any, cpus: int) -> int:
        return 1

    @hookimpl
    def dispy_job_status(self, job: Any, previous: int | None) -> None:
        with self.lock:
            self.job_changes.append((previous, job.status))

    @hookimpl
    def dispy_node_status(self, node: Any, previous: int | None) -> None:
        with self.lock:
            self.node_changes.append(node)

    @hookimpl
    def dispy_pulse_received(self, node: Any, pulse: dict[str, Any]) -> None:
        with self.lock:
            self.pulses.append(pulse)


def test_client_and_node_hooks(node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """Client: dispy_allocate, dispy_job_status, dispy_node_status, dispy_pulse_received; node: the
    contrib ``pulsetag`` extra's dispy_pulse / dispy_addoption / dispy_configure, selected by site config."""
    site = tmp_path / "site.toml"
    site.write_text('[plugins]\nextras = ["pulsetag"]\n[pulsetag]\ntag = "rack-7"\n')
    node = node_factory(env={"DISPY_CONFIG": str(site)})
    recorder = Recorder()
    statuses: list[int] = []
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port, plugins=[recorder],
                          pulse_interval=1, cluster_status=lambda s, n, j: statuses.append(s)) as cluster:
        jobs = [cluster.submit(0.6) for _ in range(3)]
        assert cluster.wait(timeout=60)
        assert all(job is not None and job.status == dispy.DispyJob.Finished for job in jobs)
        nodes = cluster.status()["nodes"]
        assert [n.cpus for n in nodes] == [1]  # dispy_allocate limited the node
        starts = sorted(job.start_time for job in jobs if job is not None and job.start_time)
        ends = sorted(job.end_time for job in jobs if job is not None and job.end_time)
        assert starts[1] >= ends[0] - 0.05  # one at a time on the single allocated CPU
        deadline = time.monotonic() + 10
        while not recorder.pulses and time.monotonic() < deadline:
            time.sleep(0.1)
    assert recorder.pulses and recorder.pulses[0]["tag"] == "rack-7"  # node extra, site config
    assert {"cpu", "memory", "disk", "swap"} <= set(recorder.pulses[0])
    assert dispy.DispyNode.AvailInfo in statuses
    assert recorder.node_changes and recorder.node_changes[0].ip_addr == "127.0.0.1"
    for job in jobs:
        assert job is not None
    assert recorder.job_changes.count((None, dispy.DispyJob.Created)) == 3
    assert recorder.job_changes.count((dispy.DispyJob.Created, dispy.DispyJob.Running)) == 3
    assert recorder.job_changes.count((dispy.DispyJob.Running, dispy.DispyJob.Finished)) == 3


class Resubmit:
    def __init__(self) -> None:
        self.failures: list[str] = []

    @hookimpl
    def dispy_recover(self, job: Any, failure: str) -> str:
        self.failures.append(failure)
        return "resubmit"


def _run_and_kill_its_node(cluster: dispy.JobCluster, nodes: dict[int, NodeProcess]) -> tuple[Any, str]:
    deadline = time.monotonic() + 30
    while len(cluster.status()["nodes"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    job = cluster.submit(3)
    assert job is not None
    while job.status != dispy.DispyJob.Running and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    port = int(str(job._node_key).rsplit(":", 1)[1])
    victim = nodes[port]
    victim.proc.kill()
    survivor = next(n for p, n in nodes.items() if p != port)
    return job, survivor.args[survivor.args.index("--name") + 1]


def test_recover_hook_resubmits_jobs_of_a_lost_node(node_factory: Callable[..., NodeProcess]) -> None:
    nodes = {n.port: n for n in (node_factory("--name", "first", "--cpus", "1"),
                                 node_factory("--name", "second", "--cpus", "1"))}
    plugin = Resubmit()
    allocs = [dispy.NodeAllocate("127.0.0.1", port=port) for port in nodes]
    with dispy.JobCluster(nap, nodes=allocs, plugins=[plugin]) as cluster:
        job, survivor = _run_and_kill_its_node(cluster, nodes)
        assert job(timeout=30) == survivor
        assert job.status == dispy.DispyJob.Finished
    assert plugin.failures == ["node-lost"]


def test_without_recovery_jobs_of_a_lost_node_are_abandoned(node_factory: Callable[..., NodeProcess]) -> None:
    nodes = {n.port: n for n in (node_factory("--name", "first", "--cpus", "1"),
                                 node_factory("--name", "second", "--cpus", "1"))}
    allocs = [dispy.NodeAllocate("127.0.0.1", port=port) for port in nodes]
    with dispy.JobCluster(nap, nodes=allocs) as cluster:
        job, _ = _run_and_kill_its_node(cluster, nodes)
        assert job(timeout=30) is None
        assert job.status == dispy.DispyJob.Abandoned
        assert job.exception is not None and "lost" in job.exception
