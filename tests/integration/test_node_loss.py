"""What becomes of jobs when real nodes die: a poison job that kills its node is resubmitted by a
reentrant cluster only ``allowed_failures`` times, then ends Abandoned with the reason; other jobs finish."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess, free_base_port
from dispy_core.testing.waiting import wait_for


def poison_or_square(n: int) -> int:
    """n < 0 kills the dispynode running it (as an OOM killer or a bad C extension might); else n * n."""
    if n < 0:
        import os
        import signal

        import psutil

        for parent in psutil.Process().parents():  # the nearest dispynode only, never the test runner
            if "dispy_core.node.cli" in parent.cmdline() or parent.name() == "dispynode":
                os.kill(parent.pid, signal.SIGKILL)
                break
        import time

        time.sleep(30)
    return n * n


def test_a_poison_job_takes_down_only_allowed_failures_nodes(node_factory: Callable[..., NodeProcess]) -> None:
    nodes = [node_factory("--name", f"n{i}", "--cpus", "1") for i in range(3)]
    allocs = [dispy.NodeAllocate("127.0.0.1", port=node.port) for node in nodes]
    with dispy.JobCluster(poison_or_square, nodes=allocs, reentrant=True, allowed_failures=2) as cluster:
        wait_for(lambda: len(cluster.status()["nodes"]) == 3, timeout=30)
        poison = cluster.submit(-1)
        assert poison is not None
        assert poison.wait(timeout=60)
        assert poison.status == dispy.DispyJob.Abandoned
        assert "lost while running it 2 times" in str(poison.exception), poison.exception
        wait_for(lambda: sum(1 for node in nodes if node.proc.poll() is None) == 1, timeout=15)  # two died
        time.sleep(0.5)
        assert sum(1 for node in nodes if node.proc.poll() is None) == 1  # and no more
        jobs = [cluster.submit(i) for i in range(10)]
        assert [job() for job in jobs if job is not None] == [i * i for i in range(10)]


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_a_node_started_late_is_used_when_it_answers(node_factory: Callable[..., NodeProcess]) -> None:
    base = free_base_port()
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=base) as cluster:
        jobs = [cluster.submit(0.01) for _ in range(5)]
        wait_for(lambda: cluster.status()["failed_nodes"], timeout=20)  # refused: nothing listens yet
        node_factory(base_port=base)
        assert cluster.wait(timeout=60)
        assert [job.status for job in jobs if job is not None] == [dispy.DispyJob.Finished] * 5


def test_a_node_restarted_on_its_port_is_used_again(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("--cpus", "1")
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port, reentrant=True) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        first = cluster.submit(3)
        assert first is not None
        wait_for(lambda: first.status == dispy.DispyJob.Running, timeout=30)
        node.proc.kill()
        node.proc.wait(10)
        wait_for(lambda: not cluster.status()["nodes"], timeout=30)
        later = [cluster.submit(0.01) for _ in range(5)]
        node_factory("--cpus", "1", base_port=node.base_port)
        first_result = first(timeout=90)  # resubmitted to the node that came back
        assert first_result == 3 and first.status == dispy.DispyJob.Finished
        assert cluster.wait(timeout=60)
        assert all(job is not None and job.status == dispy.DispyJob.Finished for job in later)
        [dnode] = cluster.status()["nodes"]
        assert dnode.busy == 0  # reconciled, not double-counted


def test_jobs_end_abandoned_when_every_node_fails_for_good(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(secret="right")
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port, secret="wrong") as cluster:
        job = cluster.submit(0)
        assert job is not None and job.wait(timeout=30)
        assert job.status == dispy.DispyJob.Abandoned
        assert f"127.0.0.1:{node.port}" in str(job.exception) and "authentication" in str(job.exception)
        late = cluster.submit(0)  # no node can run it either
        assert late is not None and late.wait(timeout=10) and late.status == dispy.DispyJob.Abandoned
        assert cluster.wait(timeout=5)


def test_first_node_timeout_bounds_the_wait_for_a_node() -> None:
    base = free_base_port()
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=base, first_node_timeout=2) as cluster:
        job = cluster.submit(0)
        assert job is not None and job.wait(timeout=30)
        assert job.status == dispy.DispyJob.Abandoned
        assert "first_node_timeout=2" in str(job.exception) and "cannot connect" in str(job.exception)


def test_a_frozen_node_is_lost_after_five_missed_pulses(node_factory: Callable[..., NodeProcess]) -> None:
    import signal

    nodes = {node.port: node for node in (node_factory("--cpus", "1"), node_factory("--cpus", "1"))}
    allocs = [dispy.NodeAllocate("127.0.0.1", port=port) for port in nodes]
    with dispy.JobCluster(nap, nodes=allocs, pulse_interval=1, reentrant=True) as cluster:
        wait_for(lambda: len(cluster.status()["nodes"]) == 2, timeout=30)
        job = cluster.submit(2)
        assert job is not None
        wait_for(lambda: job.status == dispy.DispyJob.Running, timeout=30)
        frozen = nodes[int(str(job._node_key).rsplit(":", 1)[1])]
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            failed = wait_for(lambda: cluster.status()["failed_nodes"].get(f"127.0.0.1:{frozen.port}"), timeout=20)
            detected = time.monotonic() - start
            assert "missed 5 pulses" in failed
            assert 4.0 <= detected <= 15.0, detected  # 5 pulses of 1 s, seen at the next 1 s tick
            assert job(timeout=30) == 2 and job.status == dispy.DispyJob.Finished  # resubmitted elsewhere
            assert job.ip_addr == "127.0.0.1" and not str(job._node_key).endswith(f":{frozen.port}")
        finally:
            frozen.proc.send_signal(signal.SIGCONT)


def test_a_dead_computation_host_is_set_up_again_and_no_job_is_lost(node_factory: Callable[..., NodeProcess]) -> None:
    import psutil

    node = node_factory("--cpus", "1")
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        first = cluster.submit(0)
        assert first is not None and first(timeout=30) == 0

        def hosts() -> list[psutil.Process]:
            return [p for p in psutil.Process(node.proc.pid).children()
                    if any("executor_host.host" in part for part in p.cmdline())]

        [host] = hosts()
        host.kill()  # as the OOM killer would
        host.wait(10)
        time.sleep(2.0)  # noticed within 1 s (jobs sent meanwhile: the test after this one)
        jobs = [cluster.submit(0.01) for _ in range(20)]
        assert cluster.wait(timeout=90)
        assert [job.status for job in jobs if job is not None] == [dispy.DispyJob.Finished] * 20
        assert [p.pid for p in hosts()] != [host.pid]  # a new host runs the computation
        assert "its client sets it up again" in node.log()


@pytest.mark.parametrize("reentrant", [True, False])
def test_a_job_running_when_its_host_dies_is_lost_with_it_not_failed(node_factory: Callable[..., NodeProcess],
                                                                     reentrant: bool) -> None:
    """Reentrant: resubmitted (and finishes); otherwise Abandoned with the reason, as with a lost node. It
    ended Terminated either way before, and jobs sent while the host was dying did too."""
    import psutil

    node = node_factory("--cpus", "1")
    with dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port, reentrant=reentrant) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        victim = cluster.submit(1.5)
        assert victim is not None
        wait_for(lambda: victim.status == dispy.DispyJob.Running, timeout=30)
        time.sleep(0.3)  # really running in a job process of the host
        [host] = [p for p in psutil.Process(node.proc.pid).children()
                  if any("executor_host.host" in part for part in p.cmdline())]
        host.kill()
        others = [cluster.submit(0.01) for _ in range(20)]  # at once: sent while the host is dying
        assert cluster.wait(timeout=90)
        if reentrant:
            assert victim.status == dispy.DispyJob.Finished and victim.result == 1.5
        else:
            assert victim.status == dispy.DispyJob.Abandoned
            assert "computation host process" in str(victim.exception), victim.exception
        assert [job.status for job in others if job is not None] == [dispy.DispyJob.Finished] * 20


def test_closing_with_a_frozen_node_returns_within_the_message_timeout_and_says_why(
        node_factory: Callable[..., NodeProcess], caplog: pytest.LogCaptureFixture) -> None:
    import signal

    node = node_factory("--cpus", "1")
    cluster = dispy.JobCluster(nap, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)], msg_timeout=2)
    try:
        job = cluster.submit(30)
        assert job is not None
        wait_for(lambda: job.status == dispy.DispyJob.Running, timeout=30)
        node.proc.send_signal(signal.SIGSTOP)  # frozen: the connection stays up, nothing answers
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="dispy"):
            assert cluster.close(timeout=0.5, terminate=True) is False
        assert time.monotonic() - started < 15  # msg_timeout bounds it (it took 42 s before)
        assert job.status in (dispy.DispyJob.Cancelled, dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned)
        assert "did not answer ComputationClose within 2" in caplog.text, caplog.text
    finally:
        node.proc.send_signal(signal.SIGCONT)
        cluster.close(terminate=True)
