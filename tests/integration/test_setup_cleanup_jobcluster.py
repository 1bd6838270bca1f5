"""setup and cleanup through a real dispynode and dispy.JobCluster: setup_args, setup's return value and
what jobs see of its globals, cleanup after the last job, failures with their reasons, and
``dispynode_logger`` lines in the node's log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

N = 100_000


def setup(marker_dir: str, n: int, result: Any) -> Any:
    global data, setup_cwd
    data = list(range(n))
    setup_cwd = os.getcwd()  # type: ignore[name-defined] # noqa: F821 - the node provides os
    dispynode_logger.info("setup made %d items", n)  # type: ignore[name-defined] # noqa: F821
    return result


def compute(i: int) -> tuple[int, int, bool, bool]:
    dispynode_logger.info("job %d sees %d items", i, len(data))  # type: ignore[name-defined] # noqa: F821
    return (len(data), data[i], setup_cwd == dispy_job_path,  # type: ignore[name-defined] # noqa: F821
            os.getcwd() == dispy_job_path)  # type: ignore[name-defined] # noqa: F821


def cleanup(marker_dir: str, n: int, result: Any) -> None:
    global data
    with open(os.path.join(marker_dir, "cleanup.txt"), "w") as fh:  # type: ignore[name-defined] # noqa: F821
        fh.write(f"{len(data)} {os.getcwd() == dispy_job_path} {result}")  # type: ignore[name-defined] # noqa: F821
    del data


def failing_cleanup() -> None:
    raise ZeroDivisionError("cleanup went wrong")


def plus_one(x: int) -> int:
    return x + 1


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def cluster_for(node: NodeProcess, computation: Any, setup_args: tuple[Any, ...] = (), **kwargs: Any) -> Any:
    nodes = [dispy.NodeAllocate(node.host, port=node.port, setup_args=setup_args)]
    return dispy.JobCluster(computation, nodes=nodes, dispy_port=node.base_port, **kwargs)


@pytest.mark.parametrize(("executor", "result"), [("fork", 0), ("fork", 1), ("fork", 2), ("spawn", 0),
                                                  ("spawn", 1)])
def test_setup_globals_reach_every_job_and_cleanup_runs_last(node_factory: Callable[..., NodeProcess],
                                                             tmp_path: Path, executor: str, result: int) -> None:
    node = node_factory("--executor", executor)
    markers = tmp_path / "markers"  # outside the computation's directory
    markers.mkdir()
    with cluster_for(node, compute, setup_args=(str(markers), N, result), setup=setup, cleanup=cleanup) as cluster:
        jobs = [cluster.submit(i * 100) for i in range(6)]
        for i, job in enumerate(jobs):
            assert job is not None
            assert job() == (N, i * 100, True, True), job.exception
        assert not (markers / "cleanup.txt").exists()  # not before the computation closes
    assert wait_for((markers / "cleanup.txt").exists)
    assert (markers / "cleanup.txt").read_text() == f"{N} True {result}"
    log = node.log()
    assert "setup made 100000 items" in log and "job 300 sees 100000 items" in log


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_cleanup_exception_is_logged_and_the_node_goes_on(node_factory: Callable[..., NodeProcess],
                                                          executor: str) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, plus_one, cleanup=failing_cleanup) as cluster:
        job = cluster.submit(1)
        assert job is not None and job() == 2
    assert wait_for(lambda: "ZeroDivisionError: cleanup went wrong" in node.log())
    assert "cleanup raised an exception" in node.log()
    with cluster_for(node, plus_one) as cluster:
        job = cluster.submit(2)
        assert job is not None and job() == 3
    assert node.proc.poll() is None


@pytest.mark.parametrize(("source", "kwargs", "reason"), [
    ("def setup():\n    return 5\n", {}, "setup returned 5; expected 0, 1 or 2"),
    ("def setup():\n    raise KeyError('no table')\n", {}, "KeyError: 'no table'"),
    ("def setup():\n    import time\n    time.sleep(60)\n    return 0\n", {"setup_timeout": 1},
     "setup did not finish within 1 s"),
])
def test_setup_failure_reason_reaches_the_client(node: NodeProcess, caplog: pytest.LogCaptureFixture,
                                                 source: str, kwargs: dict[str, Any], reason: str) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(source, ns)
    caplog.set_level(logging.INFO)
    cluster = cluster_for(node, plus_one, setup=ns["setup"], **kwargs)
    try:
        assert wait_for(lambda: reason in caplog.text), caplog.text
        assert "setup failed" in caplog.text
    finally:
        cluster.close(timeout=5, terminate=True)
    assert reason in node.log()
    # the node is fine for the next computation
    with cluster_for(node, plus_one) as cluster:
        job = cluster.submit(4)
        assert job is not None and job() == 5
