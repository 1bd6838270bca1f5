"""dispynode's interactive console, driven through a real process's stdin."""

from __future__ import annotations

import time
from collections.abc import Callable

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]


def slow_double(x: int) -> int:
    time.sleep(x)
    return 2 * x


def running(node: NodeProcess, text: str, tries: int = 100) -> bool:
    """Ask for the status until it shows ``text``."""
    for _ in range(tries):
        if text in node.command("status", "computation"):
            return True
        time.sleep(0.05)
    return False


def test_console_commands(node_factory: Factory) -> None:
    node = node_factory("--cpus", "1", "--name", "consolenode", daemon=False)
    out = node.command("", "no computations")
    assert "dispynode consolenode at 127.0.0.1:" in out and "1 of" in out and "0 jobs done" in out
    assert "security: dispynode consolenode has NO SECRET" in out
    assert "has NO SECRET: any program that can reach it (127.0.0.1:" in node.log()  # said at start, as a WARNING
    assert "cpus not changed" in node.command("cpus 100000", "cpus not changed")
    assert "usage" in node.command("cpus", "usage")
    node.command("cpus 1", "serving 1 CPUs")
    node.command("nonsense", "unknown command 'nonsense'")
    assert "release" in node.command("help", "this text")

    cluster = dispy.JobCluster(slow_double, nodes=[node.host], dispy_port=node.base_port)
    try:
        job = cluster.submit(0)
        assert job is not None and job() == 0
        out = node.command("status", "1 jobs done")
        assert "computation slow_double" in out and "from client 127.0.0.1:" in out

        node.command("stop", "accepting no new jobs")
        node.command("status", "not accepting jobs: node was stopped by its operator")
        held = cluster.submit(0)
        assert held is not None
        time.sleep(0.5)
        assert held.status != dispy.DispyJob.Finished
        node.command("start", "accepting jobs")
        assert held() == 0  # the client's retry lands once the node accepts again

        out = node.command("release", "released:")
        assert "released: slow_double" in out
        deadline = time.monotonic() + 20  # closing ends the host first; the released client does not come back
        while "no computations" not in node.command("status", "jobs done") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "no computations" in node.command("status", "jobs done")
    finally:
        cluster.close(timeout=5, terminate=True)

    busy = dispy.JobCluster(slow_double, nodes=[node.host], dispy_port=node.base_port)
    try:
        job = busy.submit(1)
        assert job is not None
        assert running(node, "1 running")
        node.command("quit", "quitting after 1 running jobs")
        assert job() == 2, "quit waits for running jobs"
        assert node.wait_exit(20) == 0
    finally:
        busy.close(timeout=5, terminate=True)


def test_console_exit_stops_at_once(node_factory: Factory) -> None:
    node = node_factory(daemon=False)
    node.command("exit", "exiting now")
    assert node.wait_exit(20) == 0


def test_end_of_stdin_does_not_stop_the_node(node_factory: Factory) -> None:
    node = node_factory(daemon=False)
    assert node.proc.stdin is not None
    node.proc.stdin.close()
    node.wait_log("end of input; the node keeps running")
    with dispy.JobCluster(slow_double, nodes=[node.host], dispy_port=node.base_port) as cluster:
        job = cluster.submit(0)
        assert job is not None and job() == 0
    assert node.proc.poll() is None
