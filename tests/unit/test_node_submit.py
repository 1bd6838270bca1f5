"""The node's job start: through the executor's ``submit_nowait`` (no task per job); a job the executor
cannot start comes back Terminated with why, and the CPU it held is free again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispy_core.errors import ExecutionError
from dispy_core.interfaces import JobOutcome
from dispy_core.node.files import ComputationFiles
from dispy_core.node.server import HostedComputation, NodeOptions, NodeServer
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev
from dispy_core.status import JobStatus


class FakeChannel:
    closed = False

    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    def send_nowait(self, msg: m.Message) -> bool:
        self.sent.append(msg)
        return True

    def hold(self) -> None:
        pass

    def flush(self) -> None:
        pass


class NowaitExecutor:
    name = "nowait"

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.started: list[int] = []

    def submit_nowait(self, comp_id: str, job_uid: int, args: bytes) -> None:
        if self.fail:
            raise ExecutionError("host process is not running")
        self.started.append(job_uid)

    async def submit(self, comp_id: str, job_uid: int, args: bytes) -> None:
        raise AssertionError("the node must use submit_nowait when the executor has it")


def make_server(executor: Any, tmp_path: Path) -> tuple[NodeServer, HostedComputation, FakeChannel]:
    server = NodeServer(NodeOptions(host="127.0.0.1", cpus=2, dest_path_prefix=str(tmp_path)))
    server.executor = executor
    channel = FakeChannel()
    comp = HostedComputation("c1", "comp", channel, ComputationFiles(tmp_path), cleanup_files=True,  # type: ignore[arg-type]
                             ready=True)
    server.computations["c1"] = comp
    server.state.handle(ev.CompOpened("c1", 2))
    server.state.handle(ev.CompReady("c1"))
    return server, comp, channel


def submit(uid: int) -> m.JobSubmit:
    return m.JobSubmit("c1", uid, b"args", [])


def test_submit_nowait_starts_jobs_without_a_task(tmp_path: Path) -> None:
    executor = NowaitExecutor(fail=False)
    server, comp, channel = make_server(executor, tmp_path)
    server._on_submit(channel, submit(1))  # type: ignore[arg-type]
    assert executor.started == [1] and server.state.comps['c1'].running == {1} and server.busy == 1
    assert not server._tasks and channel.sent == []


def test_a_job_the_executor_cannot_start_is_terminated_with_the_reason(tmp_path: Path) -> None:
    server, comp, channel = make_server(NowaitExecutor(fail=True), tmp_path)
    server._on_submit(channel, submit(1))  # type: ignore[arg-type]
    [result] = channel.sent
    assert isinstance(result, m.JobResult) and result.job_uid == 1
    assert result.status == JobStatus.Terminated
    assert "node could not start the job: host process is not running" in result.exception
    assert server.state.comps['c1'].running == set() and server.busy == 0  # the CPU is free for the next job


def test_jobs_beyond_the_cpus_wait_and_start_when_one_ends(tmp_path: Path) -> None:
    executor = NowaitExecutor(fail=False)
    server, comp, channel = make_server(executor, tmp_path)
    for uid in (1, 2, 3):
        server._on_submit(channel, submit(uid))  # type: ignore[arg-type]
    assert executor.started == [1, 2] and list(comp.held) == [3]  # the third waits for a CPU
    server.jobs.done("c1", 1, JobOutcome(status=JobStatus.Finished, result=b"r"))
    assert executor.started == [1, 2, 3] and comp.held == {}
    result, started = channel.sent
    assert isinstance(result, m.JobResult) and result.job_uid == 1 and result.result == b"r"
    assert isinstance(started, m.JobStarted) and started.job_uid == 3
