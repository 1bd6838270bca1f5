"""dispy.DispyExecutor against real dispynode processes, with functions of this test module (which nodes
cannot import: they travel by value)."""

from __future__ import annotations

import concurrent.futures
import math
import operator
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.client.futures import RemoteTraceback
from dispy_core.testing.nodes import NodeProcess, start_node

OFFSET = 1000  # a global of this module: goes with the function, by value


def shifted(x: int, scale: int = 1) -> int:
    return x * scale + OFFSET


def pid_of(x: int) -> tuple[int, int]:
    import os

    return x, os.getpid()


def rejects(x: int) -> int:
    raise ArithmeticError(f"cannot take {x}")


def naps(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = start_node(["-c", "2"], prefix=Path(tmp_path_factory.mktemp("node")))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def executor(node: NodeProcess) -> Iterator[dispy.DispyExecutor]:
    with dispy.DispyExecutor(nodes=["127.0.0.1"], dispy_port=node.base_port) as made:
        yield made


def test_submit_takes_any_function_per_call(executor: dispy.DispyExecutor) -> None:
    assert isinstance(executor, concurrent.futures.Executor)
    futures = [executor.submit(shifted, 2, scale=3), executor.submit(math.factorial, 5),
               executor.submit(operator.add, 2, 3), executor.submit(lambda s: s.upper(), "node")]
    assert [f.result(timeout=60) for f in futures] == [1006, 120, 5, "NODE"]
    offset = 7

    def closure(x: int) -> int:
        return x + offset

    assert executor.submit(closure, 1).result(timeout=60) == 8


def test_submit_raises_the_functions_exception_with_the_remote_traceback(executor: dispy.DispyExecutor) -> None:
    future = executor.submit(rejects, 4)
    with pytest.raises(ArithmeticError, match="cannot take 4") as caught:
        future.result(timeout=60)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "in rejects" in caught.value.__cause__.text


def test_map_keeps_order_and_chunksize_batches_calls_in_one_job(executor: dispy.DispyExecutor) -> None:
    assert list(executor.map(shifted, range(6), [2] * 6)) == [x * 2 + OFFSET for x in range(6)]
    pairs = list(executor.map(pid_of, range(12), chunksize=4))
    assert [x for x, _ in pairs] == list(range(12))
    processes = {pid for _, pid in pairs}  # a job runs in a process of its own: one per chunk of 4
    assert len(processes) == 3, pairs
    for start in range(0, 12, 4):
        assert len({pid for _, pid in pairs[start:start + 4]}) == 1
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(shifted, range(3), chunksize=0)


def test_map_raises_a_calls_exception_and_times_out(executor: dispy.DispyExecutor) -> None:
    results = executor.map(rejects, [1, 2])
    with pytest.raises(ArithmeticError, match="cannot take 1"):
        next(results)
    started = time.monotonic()
    slow = executor.map(naps, [2.0], timeout=0.3)
    with pytest.raises(TimeoutError):
        next(slow)
    assert time.monotonic() - started < 4


def test_shutdown_cancel_futures_and_the_context_manager(node_factory: Any) -> None:
    one_cpu = node_factory("-c", "1")
    with dispy.DispyExecutor(nodes=["127.0.0.1"], dispy_port=one_cpu.base_port) as executor:
        first = executor.submit(naps, 1.0)
        deadline = time.monotonic() + 30
        while first._job.status != dispy.DispyJob.Running and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.02)
        queued = [executor.submit(naps, 0.01) for _ in range(3)]
        executor.shutdown(wait=True, cancel_futures=True)
        assert first.result(timeout=5) == 1.0
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(naps, 0)
    with dispy.DispyExecutor(nodes=["127.0.0.1"], dispy_port=one_cpu.base_port) as executor:
        future = executor.submit(shifted, 1)
    assert future.done() and future.result() == 1001  # leaving the block waited for it
    assert executor.cluster._closed


MAIN_PROGRAM = '''
import sys

import dispy


class Refused(Exception):
    pass


def cube(x):
    if x < 0:
        raise Refused(f"negative {x}")
    return x ** 3


if __name__ == "__main__":
    with dispy.DispyExecutor(nodes=["127.0.0.1"], dispy_port=int(sys.argv[1])) as executor:
        print("MAP", list(executor.map(cube, range(4), chunksize=2)))
        try:
            executor.submit(cube, -1).result(timeout=60)
        except Refused as exc:
            print("RAISED", type(exc).__name__, exc, type(exc.__cause__).__name__)
'''


def test_functions_and_exception_classes_of_main_travel_by_value(node: NodeProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    program = tmp_path / "program.py"
    program.write_text(MAIN_PROGRAM)
    done = subprocess.run([sys.executable, str(program), str(node.base_port)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MAP [0, 1, 8, 27]" in done.stdout
    assert "RAISED Refused negative -1 RemoteTraceback" in done.stdout, done.stdout + done.stderr
