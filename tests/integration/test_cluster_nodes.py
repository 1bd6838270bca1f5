"""Cluster node management against real dispynode processes: allocate, deallocate, close, resetup,
CPUs, NodeAllocate forms and wildcards, and failures the program must learn about."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess, free_base_port
from dispy_core.testing.waiting import wait_for

Factory = Callable[..., NodeProcess]


def nap(seconds: float) -> str:

    time.sleep(seconds)
    return dispy_node_name  # type: ignore[name-defined] # noqa: F821


def double(x: int) -> int:
    return 2 * x


def log_setup(path: str, tag: Any) -> int:
    global setup_tag
    setup_tag = tag
    with open(path, "a") as handle:
        handle.write(f"setup {tag}\n")
    return 0


def log_cleanup(path: str, tag: Any) -> None:
    with open(path, "a") as handle:
        handle.write(f"cleanup {tag}\n")


def tag_and_file(name: str) -> tuple[Any, str]:
    import os

    with open(os.path.join(dispy_job_path, name)) as handle:  # type: ignore[name-defined] # noqa: F821
        return setup_tag, handle.read()  # type: ignore[name-defined] # noqa: F821


def setup_five() -> int:
    return 5


def setup_raises() -> int:
    raise RuntimeError("no database on this node")


class Recorder:
    """A ``cluster_status`` callback keeping every (status, node, job) it gets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[int, Any, Any]] = []

    def __call__(self, status: int, node: Any, job: Any) -> None:
        with self.lock:
            self.calls.append((status, node, job))

    def statuses(self) -> list[int]:
        with self.lock:
            return [s for s, _, _ in self.calls]

    def count(self, status: int) -> int:
        return self.statuses().count(status)



def ready(cluster: dispy.JobCluster, count: int = 1) -> list[dispy.DispyNode]:
    return wait_for(lambda: len(cluster.status()["nodes"]) >= count and cluster.status()["nodes"])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_deallocate_then_allocate_keeps_setup(node: NodeProcess, tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    with dispy.JobCluster(nap, nodes=[dispy.NodeAllocate("127.0.0.1", setup_args=(str(log), 1))],
                          dispy_port=node.base_port, setup=log_setup) as cluster:
        ready(cluster)
        assert cluster.deallocate_node("127.0.0.1") == 0
        job = cluster.submit(0)
        assert job is not None
        assert not cluster.wait(timeout=0.5) and job.status == dispy.DispyJob.Created
        assert cluster.allocate_node("127.0.0.1") == 0
        assert job(timeout=20) is not None and job.status == dispy.DispyJob.Finished
        assert lines(log) == ["setup 1"]  # set up once: deallocation keeps the node's state
        assert cluster.deallocate_node("192.0.2.7") == -1 and cluster.close_node("192.0.2.7") == -1
        assert cluster.resetup_node("192.0.2.7") == -1 and cluster.set_node_cpus("192.0.2.7", 1) == -1


def test_deallocate_lets_running_jobs_finish(node: NodeProcess) -> None:
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        ready(cluster)
        job = cluster.submit(1.0)
        assert job is not None
        wait_for(lambda: cluster.node_jobs("127.0.0.1"))
        assert cluster.node_jobs("127.0.0.1") == [job]
        assert cluster.deallocate_node("127.0.0.1") == 0
        assert job(timeout=20) is not None and job.status == dispy.DispyJob.Finished
        assert cluster.node_jobs("127.0.0.1") == []


def test_close_node_finishes_jobs_cleans_up_and_reallocation_sets_up_again(node: NodeProcess,
                                                                            tmp_path: Path) -> None:
    log = tmp_path / "life.log"
    data = tmp_path / "data.txt"
    data.write_text("payload")
    recorder = Recorder()
    with dispy.JobCluster(nap, nodes=[dispy.NodeAllocate("127.0.0.1", setup_args=(str(log), "a"))],
                          dispy_port=node.base_port, setup=log_setup, cleanup=log_cleanup, depends=[str(data)],
                          cluster_status=recorder) as cluster:
        [dnode] = ready(cluster)
        comp_dir = node.prefix / cluster.comp_id
        assert (comp_dir / "data.txt").read_text() == "payload"
        job = cluster.submit(1.0)
        assert job is not None
        wait_for(lambda: job.status == dispy.DispyJob.Running)
        assert cluster.close_node(dnode) == 0  # a DispyNode as the original's programs pass it
        assert job(timeout=20) is not None and job.status == dispy.DispyJob.Finished
        wait_for(lambda: recorder.count(dispy.DispyNode.Closed) == 1)
        wait_for(lambda: not comp_dir.exists())
        assert lines(log) == ["setup a", "cleanup a"]
        assert cluster.status()["nodes"] == [] and cluster.status()["failed_nodes"] == {}
        assert cluster.allocate_node("127.0.0.1") == 0
        assert lines(log) == ["setup a", "cleanup a", "setup a"]
        assert (comp_dir / "data.txt").read_text() == "payload"
        again = cluster.submit(0)
        assert again is not None and again(timeout=20) is not None
        assert recorder.count(dispy.DispyNode.Initialized) == 2
    assert lines(log)[-1] == "cleanup a"


class Generations(dispy.NodeAllocate):
    """Each allocate() hands the node a new data file and setup argument (the original's replace_inmem)."""

    def __init__(self, host: str, port: int, log: Path, tmp: Path) -> None:
        super().__init__(host, port=port)
        self.log, self.tmp, self.calls = log, tmp, 0
        self.seen: list[tuple[str, str, int, Any, str]] = []

    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None,
                 platform: str = "") -> int:
        self.calls += 1
        self.seen.append((ip_addr, name, cpus, avail_info, platform))
        data = self.tmp / f"gen{self.calls}" / "part.txt"
        data.parent.mkdir(exist_ok=True)
        data.write_text(f"generation {self.calls}")
        self.depends = [str(data)]
        self.setup_args = (str(self.log), self.calls)
        return 1


def test_resetup_node_calls_allocate_again_with_new_depends_and_setup_args(node: NodeProcess,
                                                                           tmp_path: Path) -> None:
    log = tmp_path / "life.log"
    alloc = Generations("127.0.0.1", node.port, log, tmp_path)
    recorder = Recorder()
    with dispy.JobCluster(tag_and_file, nodes=[alloc], setup=log_setup, cleanup=log_cleanup,
                          cluster_status=recorder) as cluster:
        [dnode] = ready(cluster)
        assert dnode.cpus == 1
        job = cluster.submit("part.txt")
        assert job is not None and job(timeout=20) == (1, "generation 1"), job.exception
        assert cluster.resetup_node("127.0.0.1") == 0
        wait_for(lambda: recorder.count(dispy.DispyNode.Initialized) == 2)
        job = cluster.submit("part.txt")
        assert job is not None and job(timeout=20) == (2, "generation 2"), job.exception
        assert lines(log) == ["setup 1", "cleanup 1", "setup 2"]
        assert recorder.count(dispy.DispyNode.Closed) == 0  # never released
    ip_addr, name, cpus, avail_info, platform = alloc.seen[0]
    assert ip_addr == "127.0.0.1" and name and cpus >= 1 and platform
    assert isinstance(avail_info, dispy.DispyNodeAvailInfo) and avail_info.memory > 0


def test_set_node_cpus(node_factory: Factory) -> None:
    node = node_factory("--cpus", "2")
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        [dnode] = ready(cluster)
        assert dnode.cpus == 2
        assert cluster.set_node_cpus("127.0.0.1", 1) == 1 and dnode.cpus == 1
        assert cluster.set_node_cpus("127.0.0.1", -1) == 1
        assert cluster.set_node_cpus("127.0.0.1", 0) == 2
        assert cluster.set_node_cpus("127.0.0.1", 5) == 2  # never more than the node granted
        assert cluster.set_node_cpus("127.0.0.1", -2) == -1  # none left
        assert cluster.set_node_cpus(dnode, 1) == 1
        jobs = [cluster.submit(0.4) for _ in range(2)]
        assert cluster.wait(timeout=30)
        starts = sorted(j.start_time for j in jobs if j is not None and j.start_time)
        ends = sorted(j.end_time for j in jobs if j is not None and j.end_time)
        assert starts[1] >= ends[0] - 0.05  # one at a time


@pytest.mark.parametrize("setup, expected", [(setup_five, "setup returned 5"),
                                             (setup_raises, "RuntimeError: no database on this node")])
def test_setup_failure_reaches_the_program(node: NodeProcess, setup: Any, expected: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    cluster = dispy.JobCluster(double, nodes=["127.0.0.1"], dispy_port=node.base_port, setup=setup,
                               cluster_status=recorder)
    try:
        failed = wait_for(lambda: cluster.status()["failed_nodes"])
        [(address, reason)] = failed.items()
        assert address == f"127.0.0.1:{node.port}" and expected in reason
        wait_for(lambda: recorder.count(dispy.DispyNode.Closed) == 1)
        [(_, dnode, job)] = [c for c in recorder.calls if c[0] == dispy.DispyNode.Closed]
        assert job is None and dnode.ip_addr == "127.0.0.1" and expected in dnode.reason
        assert cluster.status()["nodes"] == []
        assert any(expected in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    finally:
        cluster.close(timeout=0, terminate=True)


def test_auth_and_connection_failures_reach_the_program(node_factory: Factory) -> None:
    node = node_factory(secret="node-secret")
    nowhere = free_base_port() + 1
    cluster = dispy.JobCluster(double, nodes=[("127.0.0.1", node.port), ("127.0.0.1", nowhere)],
                               secret="other-secret")
    try:
        failed = wait_for(lambda: len(cluster.status()["failed_nodes"]) == 2 and cluster.status()["failed_nodes"])
        assert "authentication" in failed[f"127.0.0.1:{node.port}"]
        assert "cannot connect" in failed[f"127.0.0.1:{nowhere}"]
        assert "node-secret" not in str(failed) and "other-secret" not in str(failed)
    finally:
        cluster.close(timeout=0, terminate=True)


def test_cluster_status_for_every_job_and_node_change(node: NodeProcess) -> None:
    recorder = Recorder()
    jobs_seen: list[int] = []
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port, cluster_status=recorder,
                          job_status=lambda j: jobs_seen.append(j.status)) as cluster:
        [dnode] = ready(cluster)
        job = cluster.submit(0)
        assert job is not None and job(timeout=20) is not None
        assert cluster.wait(timeout=10)
        queued = cluster.submit(0)
    wait_for(lambda: recorder.count(dispy.DispyNode.Closed) == 1)
    statuses = recorder.statuses()
    assert statuses[0] == dispy.DispyNode.Initialized
    assert statuses[1:4] == [dispy.DispyJob.Created, dispy.DispyJob.Running, dispy.DispyJob.Finished]
    assert statuses[-1] == dispy.DispyNode.Closed
    assert queued is not None and queued.status == dispy.DispyJob.Finished
    _, finished_node, finished_job = recorder.calls[3]
    assert finished_job is job and finished_node is dnode
    assert dnode.jobs_done == 2 and dnode.busy == 0 and dnode.tx > 0 and dnode.rx > 0
    assert dnode.update_time > 0 and dnode.cpus >= 1 and dnode.name
    assert jobs_seen == [dispy.DispyJob.Finished, dispy.DispyJob.Finished]


def test_avail_info_reaches_cluster_status_with_pulses(node: NodeProcess) -> None:
    recorder = Recorder()
    with dispy.JobCluster(double, nodes=["127.0.0.1"], dispy_port=node.base_port, pulse_interval=1,
                          cluster_status=recorder) as cluster:
        [dnode] = ready(cluster)
        wait_for(lambda: recorder.count(dispy.DispyNode.AvailInfo) >= 1, timeout=10)
    info = dnode.avail_info
    assert isinstance(info, dispy.DispyNodeAvailInfo)
    assert 0 <= info.cpu <= 100 and info.memory > 0 and info.disk > 0 and 0 <= info.swap <= 100


class OnlyNamed(dispy.NodeAllocate):
    def __init__(self, host: str, wanted: str) -> None:
        super().__init__(host, cpus=1)
        self.wanted = wanted

    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None,
                 platform: str = "") -> int:
        return 1 if name == self.wanted else 0


def test_wildcards_apply_to_listed_and_discovered_nodes(node_factory: Factory) -> None:
    first = node_factory("--name", "first")
    second = node_factory("--name", "second")
    third = node_factory("--name", "third")
    # Entries saying only where a node is (string, (host, port), {host, port}) leave it to the wildcard.
    nodes = [OnlyNamed("127.0.0.*", "second"), ("127.0.0.1", first.port), {"host": "127.0.0.1", "port": second.port}]
    with dispy.JobCluster(nap, nodes=nodes) as cluster:
        wait_for(lambda: not cluster.status()["discovering"])
        assert [(n.name, n.cpus) for n in cluster.status()["nodes"]] == [("second", 1)]
        assert cluster.discover_nodes([("127.0.0.1", third.port)]) == 0  # the wildcard refuses "third"
        assert cluster.status()["failed_nodes"] == {}  # refused by choice, not failed
        specific = dispy.NodeAllocate("127.0.0.1", port=third.port, cpus=1)
        assert cluster.discover_nodes([specific]) == 1  # settings of its own: used as given
        assert sorted(n.name for n in cluster.status()["nodes"]) == ["second", "third"]
        assert cluster.discover_nodes(["*"]) == 0  # pings loopback (DISPY_HOST): nobody on the default port
        assert cluster.submit_node("first", 0) is None  # not in the cluster: refused at once
        job = cluster.submit_node("second", 0)
        assert job is not None and job(timeout=20) == "second"
        job = cluster.submit_job_id_node("mine", "third", 0)
        assert job is not None and job.id == "mine" and job(timeout=20) == "third"
    assert cluster.status()["nodes"] == []


def test_discover_nodes_uses_wildcard_settings(node_factory: Factory) -> None:
    listed = node_factory("--name", "listed", "--cpus", "2")
    later = node_factory("--name", "later", "--cpus", "2")
    nodes = [dispy.NodeAllocate("127.0.0.1", port=listed.port, cpus=2), dispy.NodeAllocate("127.0.0.*", cpus=1)]
    with dispy.JobCluster(nap, nodes=nodes) as cluster:
        [first] = ready(cluster)
        assert first.cpus == 2  # the specific entry wins over the wildcard
        assert cluster.discover_nodes([dispy.DispyNode("127.0.0.1", later.port)]) == 1
        found = {n.name: n.cpus for n in cluster.status()["nodes"]}
        assert found == {"listed": 2, "later": 1}  # the plain address got the wildcard's cpus=1


def test_wildcards_alone_find_nodes_by_discovery(node_factory: Factory) -> None:
    """On loopback (DISPY_HOST): a ping by unicast to 127.0.0.1, answered by the node's discovery port."""
    node = node_factory("--name", "found-me")
    with dispy.JobCluster(double, nodes="*", dispy_port=node.base_port) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=20)
        assert [n.name for n in cluster.status()["nodes"]] == ["found-me"]
        job = cluster.submit(21)
        assert job is not None and job(timeout=30) == 42
    heard: list[tuple[int, str, str]] = []

    def cluster_status(status: int, dnode: Any, job: Any) -> None:
        if dnode is not None and job is None:
            heard.append((status, dnode.ip_addr, str(dnode.reason)))

    with dispy.JobCluster(double, nodes=["10.99.*"], dispy_port=node.base_port, first_node_timeout=3,
                          cluster_status=cluster_status) as cluster:
        job = cluster.submit(1)  # the node answers, but the pattern does not match it: not used
        assert job is not None and job(timeout=30) is None and job.status == dispy.DispyJob.Abandoned
        assert "discovery: pinged 127.0.0.1" in str(job.exception), job.exception
    # the program hears of it too: a Closed notice for the nodes looked for, with what was tried
    assert (dispy.DispyNode.Closed, "10.99.*") in [(s, ip) for s, ip, _ in heard], heard
    assert any("no node answered discovery (pinged 127.0.0.1" in reason for _, _, reason in heard), heard


def test_status_never_says_discovery_ended_before_its_nodes_show(node: NodeProcess) -> None:
    """``discovering`` is read before the node snapshot: a discovery that ends in between is still
    reported as going on, never as "over, and no node" (dispy_cmd gave up on a ready node that way)."""
    with dispy.JobCluster(double, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=20)
        cluster._discovered.clear()
        real_snapshot = cluster._ops.snapshot

        def snapshot_while_discovery_ends() -> tuple[list[Any], dict[str, str]]:
            nodes, _failed = real_snapshot()
            cluster._discovered.set()  # discovery finishes right after the (empty) snapshot was taken
            return [], {}

        cluster._ops.snapshot = snapshot_while_discovery_ends  # type: ignore[method-assign]
        status = cluster.status()
        assert status["nodes"] == [] and status["discovering"] is True
        cluster._ops.snapshot = real_snapshot  # type: ignore[method-assign]
        status = cluster.status()
        assert status["nodes"] and status["discovering"] is False


def test_a_node_named_host_colon_port_is_used(node: NodeProcess) -> None:
    cluster = dispy.JobCluster(double, nodes=[f"127.0.0.1:{node.port}"], host="127.0.0.1")
    try:
        job = cluster.submit(21)
        assert job is not None and job(timeout=60) == 42 and job.ip_addr == "127.0.0.1"
    finally:
        cluster.close()
