"""Policies between computations and exclusive clusters, with real dispyscheduler and dispynode processes.

One node with one CPU gives the scheduler two slots (one job running, one waiting there). A long computation
L submits six jobs; once its first runs, E (set up before L) submits three. Who starts when says which
policy chose: the jobs report their start time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.status import FINAL_JOB_STATES
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.scheduler import SchedulerProcess, start_scheduler
from dispy_core.testing.waiting import wait_for

NODE_SECRET, CLUSTER_SECRET = "node-secret", "cluster-secret"
JOB_SECONDS = 0.5


def stamp(seconds: float, marker: str = "") -> tuple[float, str]:
    import time

    start = time.time()
    if marker:  # the test learns that a job really started on the node (the client says Running on sending)
        open(marker, "a").close()
    time.sleep(seconds)
    return start, dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected by the node


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
def one_cpu_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory("-c", "1", "--name", "solo", secret=NODE_SECRET)


def shared(scheduler: SchedulerProcess, computation: Any = stamp, **kwargs: Any) -> dispy.SharedJobCluster:
    kwargs.setdefault("secret", CLUSTER_SECRET)
    return dispy.SharedJobCluster(computation, scheduler_node=scheduler.host, scheduler_port=scheduler.port,
                                  **kwargs)


def set_up(scheduler: SchedulerProcess, count: int, **kwargs: Any) -> dispy.SharedJobCluster:
    """A cluster, once the scheduler has set it up (the ``count``-th computation): arrival order is known."""
    cluster = shared(scheduler, **kwargs)
    wait_for(lambda: scheduler.log().count("set up with") >= count, timeout=30)
    return cluster


def start_order(scheduler: SchedulerProcess, tmp_path: Path) -> str:
    """E is set up first, L second; L submits 6 jobs, E 3 once L's first runs: the labels in start order."""
    early = set_up(scheduler, 1)
    late = set_up(scheduler, 2)
    marker = tmp_path / "late-started"
    try:
        late_jobs = [late.submit(JOB_SECONDS, str(marker)) for _ in range(6)]
        wait_for(marker.exists, timeout=30)
        early_jobs = [early.submit(JOB_SECONDS) for _ in range(3)]
        stamps = [(job()[0], "L") for job in late_jobs if job is not None]
        stamps += [(job()[0], "E") for job in early_jobs if job is not None]
        assert len(stamps) == 9
        return "".join(label for _, label in sorted(stamps))
    finally:
        early.close(timeout=30)
        late.close(timeout=30)


@pytest.mark.parametrize("args, policy, expected", [
    ((), "loadbalance", "LLLLLLEEE"),  # the earliest-submitted jobs first
    (("--policy", "fair_cluster"), "fair_cluster", "LLELELELL"),  # turns, slot by slot
    (("--fair_cluster_scheduler",), "fair_cluster", "LLELELELL"),  # the original's flag
    (("--early_cluster_scheduler",), "early_cluster", "LLEEELLLL"),  # E was created first
])
def test_policy_decides_whose_job_goes_next(one_cpu_node: NodeProcess,
                                            scheduler_factory: Callable[..., SchedulerProcess],
                                            args: tuple[str, ...], policy: str, expected: str,
                                            tmp_path: Path) -> None:
    scheduler = scheduler_factory([one_cpu_node], *args)
    assert f"policy: {policy}" in scheduler.log()
    assert start_order(scheduler, tmp_path) == expected


def test_third_party_policy_selected_by_site_config(one_cpu_node: NodeProcess, tmp_path: Path,
                                                   scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    """contrib/dispy-smallfirst (its own distribution) is found by entry point and chosen in the site config."""
    pytest.importorskip("dispy_smallfirst", reason="contrib/dispy-smallfirst is not installed (run_tests.sh does)")
    site = tmp_path / "dispy.toml"
    site.write_text('[plugins]\npolicy = "smallest_backlog"\n')
    scheduler = scheduler_factory([one_cpu_node], env={"DISPY_CONFIG": str(site), "DISPY_POLICY": ""})
    assert "policy: smallest_backlog" in scheduler.log()
    assert start_order(scheduler, tmp_path) == "LLEEELLLL"  # E's 3 waiting jobs are fewer than L's 4


def test_exclusive_cluster_waits_for_running_ones_and_later_ones_wait_for_it(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    nodes = [node_factory("-c", "1", "--name", f"node{i}", secret=NODE_SECRET) for i in range(2)]
    scheduler = scheduler_factory(nodes)
    first = set_up(scheduler, 1)
    exclusive = set_up(scheduler, 2, exclusive=True)
    after = set_up(scheduler, 3)
    log = scheduler.wait_log("is ahead of it")
    assert "waits: it is exclusive and other computations are open" in log
    try:
        job = first.submit(0.1)
        assert job is not None and job() is not None
        exclusive_jobs = [exclusive.submit(0.3) for _ in range(4)]
        after_jobs = [after.submit(0.1) for _ in range(2)]
        time.sleep(1.0)  # the CPUs are free, but the first cluster is still open: the others wait
        assert not any(j is not None and j.status in FINAL_JOB_STATES for j in exclusive_jobs + after_jobs)
        first_closed = time.time()
        first.close(timeout=30)
        results = [j() for j in exclusive_jobs if j is not None]
        assert len(results) == 4 and min(start for start, _ in results) >= first_closed - 0.05
        assert {name for _, name in results} == {"node0", "node1"}  # every node, to itself
        time.sleep(0.5)
        assert not any(j is not None and j.status in FINAL_JOB_STATES for j in after_jobs)
        exclusive_closed = time.time()
        exclusive.close(timeout=30)
        later = [j() for j in after_jobs if j is not None]
        assert len(later) == 2 and min(start for start, _ in later) >= exclusive_closed - 0.05
    finally:
        for cluster in (first, exclusive, after):
            cluster.close(timeout=10, terminate=True)
    assert "admitted with the nodes to itself (exclusive)" in scheduler.log()


def test_computations_share_a_node_both_get_all_results(one_cpu_node: NodeProcess,
                                                        scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    """Two programs at once on one CPU: each gets every result, turn by turn."""
    scheduler = scheduler_factory([one_cpu_node], "--fair_cluster_scheduler")
    outcomes: dict[int, list[Any]] = {}

    def program(index: int) -> None:
        cluster = shared(scheduler)
        try:
            jobs = [cluster.submit(0.05) for _ in range(10)]
            outcomes[index] = [job() for job in jobs if job is not None]
        finally:
            cluster.close(timeout=30)

    threads = [threading.Thread(target=program, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == [0, 1] and all(len(results) == 10 and all(results) for results in outcomes.values())


@pytest.mark.parametrize("argv, expected", [
    (["--policy", "no-such-policy"], "installed policy plugins: "),
    (["--policy", "loadbalance", "--early_cluster_scheduler"], "choose one policy"),
    (["--fair_cluster_scheduler", "--early_cluster_scheduler"], "choose one policy"),
])
def test_bad_policy_exits_2(argv: list[str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dispy_core.scheduler.cli", "-p", "0", *argv],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
