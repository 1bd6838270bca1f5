"""``jobs_per_process``: one job process running several jobs in turn, with both executors.

The default (1) keeps the original's model, a fresh process per job; these tests check both that
model and what reuse promises: bounded reuse, one job at a time per process, each job's own output,
the working directory reset, and a crashed or cancelled job's process never reused.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Any

import pytest
from test_executor_host_executors import (  # noqa: F401 - the autouse fixtures apply here too
    EXECUTORS,
    Events,
    S,
    _importable_tests,
    _no_leftovers,
    args,
    main_funcs,
    make_spec,
    run,
    with_executor,
)

from dispy_core.errors import ConfigError
from dispy_core.interfaces import JobExecutor
from dispy_core.status import JobStatus
from dispy_plugins.executor_fork.executor import ForkExecutor
from dispy_plugins.executor_host import client as host_client

COUNTING = """
    calls = 0

    def comp(action, tag):
        global calls
        calls += 1
        print("job", tag)
        if action == "chdir":
            os.chdir("/")
        elif action == "crash":
            os._exit(3)
        elif action == "sleep":
            print(os.getpid(), file=sys.stderr, flush=True)
            time.sleep(30)
        return os.getpid(), calls, os.getcwd()
"""


def counting_spec(tmp_path: Path, jobs: int | None) -> Any:
    extra = {"jobs_per_process": jobs} if jobs is not None else {}
    return make_spec(tmp_path, main_funcs(COUNTING)["comp"], extra=extra)


async def run_one(ex: JobExecutor, ev: Events, uid: int, action: str = "") -> Any:
    await ex.submit("c1", uid, args(action, uid))
    out = await ev.done(uid)
    return out


@pytest.mark.parametrize("cls", EXECUTORS)
def test_default_is_a_fresh_process_per_job(cls: Any, tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        seen = []
        for uid in range(4):
            out = await run_one(ex, ev, uid)
            assert out.status == JobStatus.Finished, out.exception
            seen.append(S.loads(out.result))
        assert len({pid for pid, _, _ in seen}) == 4
        assert [calls for _, calls, _ in seen] == [1, 1, 1, 1]  # no job sees another's globals

    run(with_executor(cls, counting_spec(tmp_path, None), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_a_process_runs_at_most_jobs_per_process_jobs(cls: Any, tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        seen = []
        for uid in range(8):
            action = "chdir" if uid == 0 else ""
            out = await run_one(ex, ev, uid, action)
            assert out.status == JobStatus.Finished, out.exception
            assert out.stdout == f"job {uid}\n".encode()  # each job's own output only
            seen.append(S.loads(out.result))
        per_pid = collections.Counter(pid for pid, _, _ in seen)
        assert max(per_pid.values()) <= 3
        assert max(per_pid.values()) > 1  # sequential jobs do reuse a waiting process
        by_pid: dict[int, list[int]] = collections.defaultdict(list)
        for pid, calls, _ in seen:
            by_pid[pid].append(calls)
        for calls in by_pid.values():  # a reused process keeps its globals, counting from its first job
            assert calls == list(range(1, len(calls) + 1))
        assert seen[0][2] == "/"
        assert all(cwd == str(tmp_path) for _, _, cwd in seen[1:])  # every later job starts in its directory

    run(with_executor(cls, counting_spec(tmp_path, 3), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_crashed_or_cancelled_job_process_is_not_reused(cls: Any, tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        first = await run_one(ex, ev, 1)
        pid1 = S.loads(first.result)[0]
        crashed = await run_one(ex, ev, 2, "crash")
        assert crashed.status == JobStatus.Terminated
        assert "exit" in crashed.exception
        after_crash = await run_one(ex, ev, 3)
        assert after_crash.status == JobStatus.Finished, after_crash.exception
        pid3, calls3, _ = S.loads(after_crash.result)
        assert pid3 != pid1 and calls3 == 1  # a fresh process, not the one that crashed

        await ex.submit("c1", 4, args("sleep", 4))
        await asyncio.sleep(0.5)
        assert await ex.cancel("c1", 4, grace=0.5)
        cancelled = await ev.done(4)
        assert cancelled.status == JobStatus.Cancelled
        pid4 = int(cancelled.stderr.decode().split()[0])
        assert pid4 == pid3  # the cancelled job ran in the process waiting first: job 3's
        after_cancel = await run_one(ex, ev, 5)
        assert after_cancel.status == JobStatus.Finished, after_cancel.exception
        pid5, calls5, _ = S.loads(after_cancel.result)
        assert pid5 != pid4 and calls5 == 1

    run(with_executor(cls, counting_spec(tmp_path, 100), body))


def test_parallel_jobs_never_share_a_process(tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(t):
            time.sleep(t)
            return os.getpid()
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid in range(4):
            await ex.submit("c1", uid, args(0.5))
        pids = [S.loads((await ev.done(uid)).result) for uid in range(4)]
        assert len(set(pids)) == 4  # all four ran at once, each in its own process

    run(with_executor(ForkExecutor, make_spec(tmp_path, ns["comp"], extra={"jobs_per_process": 50}), body))


@pytest.mark.parametrize("value", [0, -1, "3", 2.5])
def test_bad_spares_setting_is_a_config_error(value: Any) -> None:
    class Config:
        def get(self, key: str, default: Any = None) -> Any:
            return value if key == "executor.fork.spares" else default

    with pytest.raises(ConfigError, match="executor.fork.spares"):
        ForkExecutor(Config())


def test_spare_defaults_per_mode() -> None:
    assert host_client.DEFAULT_SPARES == {"fork": 8, "spawn": 2}
    assert ForkExecutor().spares == 8


def test_a_process_whose_job_left_a_thread_writing_is_not_reused(tmp_path: Path) -> None:
    """A thread a job leaves behind that still sends (here a provisional result after the job returned)
    must not be taken for the next job's output: the host retires that process."""
    ns = main_funcs("""
        import threading

        def comp(leave_thread):
            if leave_thread:
                def late():
                    time.sleep(0.3)
                    dispy_provisional_result("late")
                threading.Thread(target=late).start()
            return os.getpid()
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args(True))
        first = await ev.done(1)
        assert first.status == JobStatus.Finished, first.exception
        await asyncio.sleep(1.0)  # the thread writes while its process waits for a job
        await ex.submit("c1", 2, args(False))
        second = await ev.done(2)
        assert second.status == JobStatus.Finished, second.exception
        assert S.loads(second.result) != S.loads(first.result)  # not the process that wrote between jobs
        assert not [entry for entry in ev.log if entry[0] == "prov" and entry[1] == 2]

    run(with_executor(ForkExecutor, make_spec(tmp_path, ns["comp"], extra={"jobs_per_process": 10}), body))


def test_cancelled_and_crashed_reusable_processes_leave_no_fd_behind(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        host_pid = ex._links["c1"].pid  # type: ignore[attr-defined]

        async def settled_fds() -> int:
            await asyncio.sleep(1.0)  # spares back at their target
            return len(os.listdir(f"/proc/{host_pid}/fd"))

        assert (await run_one(ex, ev, 0)).status == JobStatus.Finished
        before = await settled_fds()
        for uid in range(1, 7):
            if uid % 2:
                await ex.submit("c1", uid, args("sleep", uid))
                await asyncio.sleep(0.3)
                assert await ex.cancel("c1", uid, grace=0.2)
                assert (await ev.done(uid)).status == JobStatus.Cancelled
            else:
                assert (await run_one(ex, ev, uid, "crash")).status == JobStatus.Terminated
        assert (await run_one(ex, ev, 99)).status == JobStatus.Finished
        assert await settled_fds() <= before  # each dead process's pipes are closed

    run(with_executor(ForkExecutor, counting_spec(tmp_path, 100), body))
