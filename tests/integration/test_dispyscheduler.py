"""dispyscheduler and SharedJobCluster against real dispyscheduler and dispynode processes on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import dispy
from dispy_core.status import JobStatus
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.scheduler import SchedulerProcess, free_scheduler_base, start_scheduler
from dispy_core.testing.waiting import wait_for

NODE_SECRET, CLUSTER_SECRET = "node-secret", "cluster-secret"


def square(n: int) -> tuple[int, str]:
    import time

    time.sleep(0.02)
    return n * n, dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected by the node


def slow(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def fails(n: int) -> int:
    raise ValueError(f"bad value {n}")


def reads_depend(n: int) -> str:
    with open("shared_data.txt") as handle:
        return f"{handle.read().strip()}-{n}"


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
def two_nodes(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    return [node_factory("-c", "2", "--name", f"node{i}", secret=NODE_SECRET) for i in range(2)]


def free_pair_base() -> int:
    """A base port with base + 1 (a node) and base + 2 (the scheduler's clients) free on 127.0.0.1."""
    for _ in range(200):
        base = free_scheduler_base()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two free ports in a row")


def shared(scheduler: SchedulerProcess, computation: Any, **kwargs: Any) -> dispy.SharedJobCluster:
    kwargs.setdefault("secret", CLUSTER_SECRET)
    return dispy.SharedJobCluster(computation, scheduler_node=scheduler.host, scheduler_port=scheduler.port,
                                  **kwargs)


def test_fifty_jobs_through_two_nodes(two_nodes: list[NodeProcess],
                                      scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(two_nodes)
    cluster = shared(scheduler, square)
    try:
        jobs = [cluster.submit(i) for i in range(50)]
        results = [job() for job in jobs if job is not None]
        assert [r[0] for r in results] == [i * i for i in range(50)]
        assert {r[1] for r in results} == {"node0", "node1"}  # the scheduler used both nodes
        assert all(job.status == JobStatus.Finished for job in jobs if job is not None)
        node = cluster.status()["nodes"][0]
        assert node.cpus == 4  # what the two nodes give this computation, for the client's pipelining
    finally:
        assert cluster.close(timeout=30)
    log = scheduler.wait_log("closed")
    assert "set up with 4 CPUs on 2 nodes" in log
    for node in two_nodes:
        node.wait_log("closed after")  # the scheduler closed the computation on each node


def test_exceptions_output_cancel_and_depends(two_nodes: list[NodeProcess], tmp_path: Path,
                                              scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(two_nodes)
    failing = shared(scheduler, fails)
    try:
        job = failing.submit(3)
        assert job is not None and job() is None
        assert job.status == JobStatus.Terminated and "bad value 3" in (job.exception or "")
    finally:
        failing.close()
    data = tmp_path / "shared_data.txt"
    data.write_text("payload")
    reader = shared(scheduler, reads_depend, depends=[str(data)])
    try:
        assert [j() for j in [reader.submit(i) for i in range(4)] if j is not None] == [
            f"payload-{i}" for i in range(4)]
    finally:
        reader.close()
    sleeper = shared(scheduler, slow)
    try:
        long = sleeper.submit(30)
        assert long is not None
        wait_for(lambda: any("slow" in n.log() and "opened" in n.log() for n in two_nodes))
        time.sleep(0.5)
        assert sleeper.cancel(long) == 0
        assert long() is None
        assert long.status in (JobStatus.Cancelled, JobStatus.Terminated)
    finally:
        sleeper.close(timeout=15, terminate=True)


def test_three_programs_at_once(two_nodes: list[NodeProcess],
                                scheduler_factory: Callable[..., SchedulerProcess], tmp_path: Path) -> None:
    scheduler = scheduler_factory(two_nodes)
    outcomes: dict[str, Any] = {}

    def program(name: str) -> None:
        cluster = shared(scheduler, square)
        try:
            jobs = [cluster.submit(i) for i in range(30)]
            outcomes[name] = [job()[0] for job in jobs if job is not None and job() is not None]
        finally:
            cluster.close(timeout=30)

    threads = [threading.Thread(target=program, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    # and one in a process of its own, as separate programs are
    script = tmp_path / "program.py"
    script.write_text(
        "import sys, dispy\n"
        "def square(n):\n    return n * n\n"
        "cluster = dispy.SharedJobCluster(square, scheduler_node=sys.argv[1], scheduler_port=int(sys.argv[2]),\n"
        f"                                 secret={CLUSTER_SECRET!r})\n"
        "jobs = [cluster.submit(i) for i in range(30)]\n"
        "print(sum(j() for j in jobs))\n"
        "cluster.close()\n")
    out = subprocess.run([sys.executable, str(script), scheduler.host, str(scheduler.port)], capture_output=True,
                         text=True, timeout=60)
    for thread in threads:
        thread.join(60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(sum(i * i for i in range(30)))
    for name in ("t0", "t1"):
        assert outcomes[name] == [i * i for i in range(30)]


def test_wrong_cluster_secret_is_refused_with_reason(two_nodes: list[NodeProcess],
                                                    scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(two_nodes)
    cluster = shared(scheduler, square, secret="not-the-secret")
    try:
        job = cluster.submit(1)
        assert job is not None and job() is None
        assert job.status == JobStatus.Abandoned
        assert "authentication failed" in (job.exception or "")
        failed = cluster.status()["failed_nodes"]
        assert any("authentication failed" in reason for reason in failed.values())
    finally:
        cluster.close()
    scheduler.wait_log("refused client")


def test_nodes_with_another_secret_fail_setup_with_reason(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    node = node_factory(secret="other")
    scheduler = scheduler_factory([node])
    cluster = shared(scheduler, square)
    try:
        job = cluster.submit(1)
        assert job is not None and job() is None
        assert job.status == JobStatus.Abandoned
        assert "no node could set up the computation" in (job.exception or "")
        assert "authentication failed" in (job.exception or "")
    finally:
        cluster.close()


@pytest.mark.parametrize("argv, expected", [
    (["--bogus"], "unrecognized arguments"),
    (["--pulse_interval", "0"], "--pulse_interval must be between 1 and 600"),
    (["-n", "127.0.0.1:notaport"], "the port must be a number"),
    (["--node_keyfile", "/nonexistent"], "--node_keyfile needs --node_certfile"),
    (["--cluster_certfile", "/nonexistent/cert.pem"], "is not a readable file"),
])
def test_bad_option_exits_2(argv: list[str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dispy_core.scheduler.cli", *argv], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert expected in proc.stderr


def test_sigterm_closes_computations_and_leaves_no_process(
        two_nodes: list[NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(two_nodes)
    cluster = shared(scheduler, slow)
    try:
        jobs = [cluster.submit(60) for _ in range(4)]
        scheduler.wait_log("set up with 4 CPUs on 2 nodes")
        wait_for(lambda: any(job is not None and job.status == JobStatus.Running for job in jobs), timeout=30)
        time.sleep(0.5)  # the jobs run on the nodes
        started = [job for job in jobs if job is not None and job.status == JobStatus.Running]
        scheduler.proc.send_signal(signal.SIGTERM)
        assert scheduler.proc.wait(20) == 0
        log = scheduler.log()
        assert "closing 1 computations on their nodes" in log and "stopped" in log
        for node in two_nodes:  # the computation is closed there, its jobs and processes gone
            node.wait_log("closed after")
            wait_for(lambda node=node: not psutil.Process(node.proc.pid).children(recursive=True), timeout=20)
        for job in started:  # the client hears of it: the jobs that ran end, none hangs
            job(timeout=30)
            assert job.status in (JobStatus.Abandoned, JobStatus.Terminated, JobStatus.Cancelled)
        # One that only waited at the scheduler never ran: it waits for the scheduler to come back.
        assert all(job.status == JobStatus.Created for job in jobs if job is not None and job not in started)
    finally:
        cluster.close(timeout=5, terminate=True)
    assert all(job is not None and job.status != JobStatus.Created for job in jobs)  # closed: none left behind


def test_a_lost_node_jobs_go_to_the_other(two_nodes: list[NodeProcess],
                                          scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    scheduler = scheduler_factory(two_nodes)
    cluster = shared(scheduler, slow, reentrant=True)
    try:
        jobs = [cluster.submit(1.5) for _ in range(8)]
        scheduler.wait_log("set up with 4 CPUs on 2 nodes")
        time.sleep(0.5)  # both nodes run jobs now
        two_nodes[0].stop()
        assert [job() for job in jobs if job is not None] == [1.5] * 8  # rerun on node1 (reentrant)
        assert all(job.status == JobStatus.Finished for job in jobs if job is not None)
    finally:
        cluster.close(timeout=30)
    assert f"lost node 127.0.0.1:{two_nodes[0].port} (closed by peer) with 4 jobs" in scheduler.log()


def test_nodes_found_by_discovery(node_factory: Callable[..., NodeProcess],
                                  scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    base = free_pair_base()
    node = node_factory("--name", "found", secret=NODE_SECRET, base_port=base)  # listens on base + 1
    scheduler = scheduler_factory([], base_port=base)  # no -n: pings base + 1 on 127.0.0.1
    cluster = shared(scheduler, square)
    try:
        assert [job()[1] for job in [cluster.submit(i) for i in range(3)] if job is not None] == ["found"] * 3
    finally:
        cluster.close()
    assert f"every node discovery finds (UDP {node.port})" in scheduler.log()


def test_tls_on_both_hops_with_certificates_apart(node_factory: Callable[..., NodeProcess], tmp_path: Path,
                                                   scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    from dispy_core.testing.certs import make_self_signed

    node_cert, node_key = make_self_signed(tmp_path / "nodes", common_name="nodes")
    client_cert, client_key = make_self_signed(tmp_path / "clients", common_name="clients")
    node = node_factory("--certfile", str(node_cert), "--keyfile", str(node_key), "--name", "tls-node",
                        secret=NODE_SECRET)
    scheduler = scheduler_factory([node], "--node_certfile", str(node_cert), "--node_keyfile", str(node_key),
                                  "--cluster_certfile", str(client_cert), "--cluster_keyfile", str(client_key))
    assert "with TLS" in scheduler.log()
    with shared(scheduler, square, certfile=str(client_cert), keyfile=str(client_key)) as cluster:
        job = cluster.submit(7)
        assert job is not None and job(timeout=30) == (49, "tls-node")
    # the nodes' certificate does not open the clients' side, nor does no TLS
    for kwargs in ({"certfile": str(node_cert), "keyfile": str(node_key)}, {}):
        cluster = shared(scheduler, square, **kwargs)
        try:
            assert cluster.submit(1) is not None
            assert not cluster.wait(timeout=2)
            assert cluster.status()["nodes"] == []
            assert wait_for(lambda c=cluster: list(c.status()["failed_nodes"].values()), timeout=20)
        finally:
            cluster.close(timeout=0, terminate=True)


def reads_late_file(n: int) -> tuple[str, str]:
    import time

    time.sleep(0.05)
    with open("late_data.txt") as handle:
        return handle.read().strip(), dispy_node_name  # type: ignore[name-defined]  # noqa: F821 - injected


def test_send_file_after_setup_reaches_every_node_and_later_ones(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess],
        tmp_path: Path) -> None:
    early = node_factory("-c", "1", "--name", "early", secret=NODE_SECRET)
    late_base = free_pair_base()  # named to the scheduler now, started after the file was sent
    scheduler = scheduler_factory([early, f"127.0.0.1:{late_base + 1}"])
    cluster = shared(scheduler, reads_late_file)
    try:
        data = tmp_path / "late_data.txt"
        data.write_text("sent after setup")
        assert cluster.send_file(str(data), None) == 0
        assert cluster.send_file(str(tmp_path / "no_such_file.txt"), None) == -1
        node_factory("-c", "1", "--name", "late", secret=NODE_SECRET, base_port=late_base)
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while seen != {"early", "late"} and time.monotonic() < deadline:
            results = [job() for job in [cluster.submit(i) for i in range(4)] if job is not None]
            assert {text for text, _ in results} == {"sent after setup"}
            seen |= {name for _, name in results}
        assert seen == {"early", "late"}  # the node that came later got the file with the computation
    finally:
        assert cluster.close(timeout=30)


def test_a_job_queued_at_the_scheduler_is_created_until_a_node_starts_it(
        node_factory: Callable[..., NodeProcess], scheduler_factory: Callable[..., SchedulerProcess]) -> None:
    node = node_factory("-c", "1", "--name", "only", secret=NODE_SECRET)
    scheduler = scheduler_factory([node])
    holder, waiter = shared(scheduler, slow), shared(scheduler, slow)
    try:
        first = holder.submit(2.0)
        assert first is not None
        wait_for(lambda: first.status == JobStatus.Running, timeout=30)
        assert first.ip_addr == "127.0.0.1"  # the node's address, from the scheduler
        second = waiter.submit(0.1)  # its cluster has the node's CPU to itself, but the other program uses it
        assert second is not None
        time.sleep(0.5)
        assert second.status == JobStatus.Created  # it waits at the scheduler
        assert second() == 0.1 and second.status == JobStatus.Finished and second.ip_addr == "127.0.0.1"
        assert second.start_time is not None and first.end_time is not None
        assert second.start_time >= first.end_time - 0.5
    finally:
        assert holder.close(timeout=30) and waiter.close(timeout=30)
