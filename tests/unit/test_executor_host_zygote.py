"""The fork server: fork-mode job processes are its children, their ends (crashes included) reach the
host through it, and the host carries on forking by itself if it dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_executor_host_executors import (  # noqa: F401 - the autouse fixtures apply here too
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

from dispy_core.interfaces import JobExecutor
from dispy_core.status import JobStatus
from dispy_plugins.executor_fork.executor import ForkExecutor

JOBS = main_funcs("""
    import signal

    def comp(action):
        if action == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if action == "exit3":
            os._exit(3)
        if action == "sleep":
            time.sleep(0.5)
        return os.getpid(), os.getppid()
""")


def spec(tmp_path: Path, **extra: Any) -> Any:
    return make_spec(tmp_path, JOBS["comp"], extra=extra)


def host_pid(ex: JobExecutor) -> int:
    return int(ex._links["c1"].pid)  # type: ignore[attr-defined]


async def finished(ex: JobExecutor, ev: Events, uid: int, action: str = "") -> tuple[int, int]:
    await ex.submit("c1", uid, args(action))
    out = await ev.done(uid)
    assert out.status == JobStatus.Finished, out.exception
    pid, ppid = S.loads(out.result)
    return int(pid), int(ppid)


def test_job_processes_are_forked_by_the_zygote_and_crashes_are_reported(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        host = host_pid(ex)
        await asyncio.sleep(0.5)  # the spares are forked after setup (a job arriving first is forked here)
        _pid, ppid = await finished(ex, ev, 1)
        assert ppid != host and psutil.Process(ppid).ppid() == host  # the zygote, a child of the host
        for uid, action, words in ((2, "segv", "killed by signal SIGSEGV"), (3, "exit3", "exited with status 3")):
            await ex.submit("c1", uid, args(action))
            out = await ev.done(uid)
            assert out.status == JobStatus.Terminated and words in out.exception  # the status came via the zygote
        assert (await finished(ex, ev, 4))[1] == ppid

    run(with_executor(ForkExecutor, spec(tmp_path), body))


def test_without_zygote_the_host_forks(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        await asyncio.sleep(0.5)
        for uid in range(3):
            assert (await finished(ex, ev, uid))[1] == host_pid(ex)

    run(with_executor(ForkExecutor, spec(tmp_path, zygote=False), body))


def test_host_carries_on_when_the_zygote_dies(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        host = host_pid(ex)
        await asyncio.sleep(0.5)
        _pid, zygote = await finished(ex, ev, 1)
        assert zygote != host
        await ex.submit("c1", 2, args("sleep"))  # a job running while its forker dies
        os.kill(zygote, signal.SIGKILL)
        assert (await ev.done(2)).status == JobStatus.Finished
        await asyncio.sleep(0.3)
        for uid in range(3, 15):  # the spares it forked, then processes the host forks itself
            await finished(ex, ev, uid)
        assert (await finished(ex, ev, 20))[1] == host
        await ex.submit("c1", 21, args("exit3"))
        out = await ev.done(21)
        assert out.status == JobStatus.Terminated and "exited with status 3" in out.exception

    run(with_executor(ForkExecutor, spec(tmp_path), body))


@pytest.mark.parametrize("zygote", [True, False])
def test_every_job_process_carries_its_own_token(zygote: bool, tmp_path: Path) -> None:
    """The marker that lets a cancel find what a job started, even after it left the job's tree."""
    ns = main_funcs("""
        import subprocess

        def comp():
            seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('DISPY_JOB_TOKEN'))"],
                                  capture_output=True, text=True).stdout.strip()
            return os.environ.get("DISPY_JOB_TOKEN"), seen
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        await asyncio.sleep(0.5)  # spares forked by the zygote, when there is one
        tokens = []
        for uid in range(4):
            await ex.submit("c1", uid, args())
            out = await ev.done(uid)
            assert out.status == JobStatus.Finished, out.exception
            own, seen = S.loads(out.result)
            assert own and own == seen  # in the job, and in every program it starts
            tokens.append(own)
        assert len(set(tokens)) == 4

    run(with_executor(ForkExecutor, make_spec(tmp_path, ns["comp"], extra={"zygote": zygote}), body))


def alive(pid: int) -> list[psutil.Process]:
    """``pid``'s children that have not exited (one may end while we look)."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


class Settings:
    """A node config with only ``executor.*`` settings."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@pytest.mark.parametrize("spares", [3, 8])
def test_the_zygote_keeps_the_configured_spares_ready(spares: int, tmp_path: Path) -> None:
    """``spares`` are forked after setup; used down to a quarter of them, they are forked again."""
    async def wait_count(pid: int, count: int) -> int:
        deadline = asyncio.get_running_loop().time() + 10
        while len(alive(pid)) != count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return len(alive(pid))

    async def body(ex: JobExecutor, ev: Events) -> None:
        [zygote] = alive(host_pid(ex))  # no job yet: the host's only child
        assert await wait_count(zygote.pid, spares) == spares
        for uid in range(spares - spares // 4):  # each job uses up a spare
            assert (await finished(ex, ev, uid))[1] == zygote.pid
        assert await wait_count(zygote.pid, spares) == spares

    run(with_executor(lambda: ForkExecutor(Settings(**{"executor.fork.spares": spares})), spec(tmp_path), body))


def test_node_setting_turns_the_zygote_off(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        await asyncio.sleep(0.5)
        assert (await finished(ex, ev, 1))[1] == host_pid(ex)
        assert alive(host_pid(ex))  # its spares, and no zygote among them
        assert all(child.children() == [] for child in alive(host_pid(ex)))

    run(with_executor(lambda: ForkExecutor(Settings(**{"executor.fork.zygote": False})), spec(tmp_path), body))


def test_a_burst_beyond_the_spares_waits_for_the_zygote_instead_of_forking_in_the_host(tmp_path: Path) -> None:
    """More jobs at once than spares: each waits for a process the zygote forks; the host, which passes
    every result along, forks none itself (it did, for each job that found no spare idle)."""
    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid in range(12):
            await ex.submit("c1", uid, args(""))
        parents = set()
        for uid in range(12):
            out = await ev.done(uid)
            assert out.status == JobStatus.Finished, out.exception
            parents.add(int(S.loads(out.result)[1]))
        assert host_pid(ex) not in parents and len(parents) == 1, parents

    run(with_executor(lambda: ForkExecutor(Settings(**{"executor.fork.spares": 1})), spec(tmp_path), body))


def test_a_job_waiting_for_a_process_is_cancelled_at_once(tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid in range(6):
            await ex.submit("c1", uid, args("sleep"))
        await ex.cancel("c1", 5)  # still waiting for its process: no grace to wait out
        out = await ev.done(5, timeout=5)
        assert out.status == JobStatus.Cancelled
        for uid in range(5):
            assert (await ev.done(uid)).status == JobStatus.Finished

    run(with_executor(lambda: ForkExecutor(Settings(**{"executor.fork.spares": 1})), spec(tmp_path), body))
