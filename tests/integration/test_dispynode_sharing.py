"""Sharing: several computations of one client on a node, two nodes on one host, restarting a node that
was killed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]


def triple(x: int) -> int:
    return 3 * x


def where(x: float) -> str:
    time.sleep(x)
    return dispy_node_name  # type: ignore[name-defined] # noqa: F821


def test_two_clusters_of_one_client_share_a_node(node_factory: Factory) -> None:
    node = node_factory("--cpus", "2")
    first = dispy.JobCluster(triple, nodes=[node.host], dispy_port=node.base_port)
    second = dispy.JobCluster(where, nodes=[node.host], dispy_port=node.base_port)
    try:
        jobs_a = [first.submit(i) for i in range(4)]
        jobs_b = [second.submit(0.05) for _ in range(4)]
        assert [job() for job in jobs_a if job is not None] == [0, 3, 6, 9]
        assert len({job() for job in jobs_b if job is not None}) == 1
        assert len([d for d in node.prefix.iterdir() if d.is_dir()]) == 2, "two computations at once"
    finally:
        first.close()
        second.close()
    assert "refused" not in node.log().replace("refused connection", "")


def test_two_nodes_on_one_host(node_factory: Factory) -> None:
    one = node_factory("--cpus", "1", "--name", "node-one")
    two = node_factory("--cpus", "1", "--name", "node-two")
    assert one.port != two.port and one.prefix != two.prefix
    nodes = [{"host": n.host, "port": n.port} for n in (one, two)]
    ready: set[str] = set()
    both = threading.Event()

    def cluster_status(status: int, node: Any, job: Any) -> None:
        if status == dispy.DispyNode.Initialized:
            ready.add(node.name)
            if len(ready) == 2:
                both.set()

    with dispy.JobCluster(where, nodes=nodes, cluster_status=cluster_status) as cluster:
        assert both.wait(20), ready
        jobs = [cluster.submit(0.3) for _ in range(4)]
        assert sorted(job() for job in jobs if job is not None) == ["node-one"] * 2 + ["node-two"] * 2


def test_killed_node_restarts_on_the_same_port_and_prefix(node_factory: Factory, tmp_path: Path) -> None:
    prefix = tmp_path / "shared-prefix"
    prefix.mkdir()
    logs = tmp_path / "logs"  # not in the prefix, which --clean empties
    logs.mkdir()
    node = node_factory(prefix=prefix, log_dir=logs)
    base = node.base_port
    with dispy.JobCluster(triple, nodes=[node.host], dispy_port=base, cleanup=False) as cluster:
        job = cluster.submit(2)
        assert job is not None and job() == 6
    cluster = dispy.JobCluster(triple, nodes=[node.host], dispy_port=base)  # open when the node dies
    try:
        job = cluster.submit(1)
        assert job is not None and job() == 3
        leftovers = sorted(p.name for p in prefix.iterdir())
        assert len(leftovers) >= 2
        first_orphans = psutil.Process(node.proc.pid).children(recursive=True)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

        again = node_factory(prefix=prefix, base_port=base, log_dir=logs)  # no --clean: starts, and keeps what is there
        assert again.port == node.port
        assert all((prefix / name).exists() for name in leftovers)
        with dispy.JobCluster(triple, nodes=[again.host], dispy_port=base) as fresh:
            job = fresh.submit(5)
            assert job is not None and job() == 15
        orphans = psutil.Process(again.proc.pid).children(recursive=True)  # its hosts end by themselves
        again.proc.send_signal(signal.SIGKILL)
        again.proc.wait(10)
        # the first cluster is still open and tries its lost node again: on the next node on this port it would
        # set up its computation again, making its directory anew (CI saw that as a leftover --clean missed)
        cluster.close(timeout=5, terminate=True)
        psutil.wait_procs(first_orphans + orphans, timeout=20)  # none may still write into the prefix when
        # --clean empties it

        cleaned = node_factory("--clean", prefix=prefix, base_port=base, log_dir=logs)
        assert not any((prefix / name).exists() for name in leftovers)
        assert cleaned.proc.poll() is None
    finally:
        cluster.close(timeout=5, terminate=True)


def test_waiting_jobs_of_every_computation_start_when_a_cpu_frees(node_factory: Factory) -> None:
    """A CPU freed by one computation starts the oldest job waiting on the node, whichever computation
    it belongs to (jobs queue on the node while every CPU is busy)."""
    node = node_factory("--cpus", "1")
    first = dispy.JobCluster(where, nodes=[node.host], dispy_port=node.base_port)
    second = dispy.JobCluster(where, nodes=[node.host], dispy_port=node.base_port)
    try:
        jobs_a = [first.submit(0.5) for _ in range(2)]
        deadline = time.monotonic() + 20
        while not all(j is not None and j._node_key for j in jobs_a) and time.monotonic() < deadline:
            time.sleep(0.02)
        job_b = second.submit(0.1)
        assert job_b is not None
        assert job_b(timeout=20) is not None, "the other computation's waiting job never started"
        assert all(job is not None and job(timeout=20) is not None for job in jobs_a)
    finally:
        first.close(timeout=5, terminate=True)
        second.close(timeout=5, terminate=True)
