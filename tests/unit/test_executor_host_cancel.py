"""Cancelling jobs in both executors, with real processes: the KeyboardInterrupt and its grace, then
SIGTERM and SIGKILL for the job and everything it started (also processes that ignore signals, that
started a session of their own, or that left the job's process tree), and exactly one ``done``."""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any

import pytest
from test_executor_host_executors import (  # noqa: F401 - the autouse fixtures apply here too
    EXECUTORS,
    Events,
    _importable_tests,
    _no_leftovers,
    args,
    gone,
    main_funcs,
    make_spec,
    run,
    with_executor,
)

from dispy_core.interfaces import JobExecutor
from dispy_core.status import JobStatus
from dispy_plugins.executor_fork.executor import ForkExecutor
from dispy_plugins.executor_host import client, host
from dispy_plugins.executor_spawn_windows.executor import SpawnExecutor
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

S = PickleSerializer()
GRACE = 0.4

STUBBORN = """
import os, signal, subprocess, sys, time
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
"""

CHILD = STUBBORN + """
# a grandchild in a session of its own, still below the job in the process tree
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1] + "time.sleep(60)"], start_new_session=True)
# an orphan: double fork and setsid; its parent exits, so it leaves the job's process tree
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    orphan = os.fork()
    if orphan == 0:
        time.sleep(60)
        os._exit(0)
    os.write(w, str(orphan).encode())
    os._exit(0)
os.waitpid(middle, 0)
print(grandchild.pid, int(os.read(r, 64)), flush=True)
time.sleep(60)
"""

JOB_SRC = """
import os, signal, subprocess, sys, time

def comp(mode, child_src, stubborn_src):
    if mode == "stubborn":
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", child_src, stubborn_src], stdout=subprocess.PIPE)
    grandchild, orphan = map(int, child.stdout.readline().split())
    dispy_provisional_result((os.getpid(), child.pid, grandchild, orphan))
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        if mode == "polite":
            time.sleep(0.1)  # saves its state, within the grace period
            return "saved"
        raise
"""


async def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not gone(pid)]
        if not alive:
            return []
        await asyncio.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


async def start_and_cancel(ex: JobExecutor, ev: Events, uid: int, mode: str) -> tuple[list[int], float, Any]:
    waiter = asyncio.ensure_future(ev.provisional(uid))
    await ex.submit("c1", uid, args(mode, CHILD, STUBBORN))
    pids = list(await waiter)
    t0 = time.monotonic()
    assert await ex.cancel("c1", uid, grace=GRACE)
    out = await ev.done(uid, timeout=15)
    return pids, time.monotonic() - t0, out


@pytest.mark.parametrize("cls", EXECUTORS)
@pytest.mark.parametrize("mode", ["stubborn", "plain", "polite"])
def test_cancel_kills_the_whole_tree(cls: Any, mode: str, tmp_path: Path) -> None:
    ns = main_funcs(JOB_SRC)

    async def body(ex: JobExecutor, ev: Events) -> None:
        pids, elapsed, out = await start_and_cancel(ex, ev, 1, mode)
        if mode == "stubborn":  # ignores SIGINT and SIGTERM: SIGKILL after the grace and the TERM wait
            assert out.status == JobStatus.Cancelled and out.exception == "Cancelled"
            assert GRACE + host.KILL_AFTER_TERM - 0.1 <= elapsed < GRACE + host.KILL_AFTER_TERM + 3
        elif mode == "plain":  # the KeyboardInterrupt ends it at once
            assert out.status == JobStatus.Cancelled and "KeyboardInterrupt" in out.exception
            assert elapsed < GRACE + 1
        else:  # catches the interrupt and returns a value: a normal finish
            assert out.status == JobStatus.Finished and S.loads(out.result) == "saved"
            assert elapsed < GRACE + 1
        assert await wait_gone(pids) == []  # job, child, setsid grandchild and orphan
        await asyncio.sleep(0.3)
        assert ev.done_count == {1: 1}
        assert not await ex.cancel("c1", 1)  # done: nothing to cancel any more

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_cancel_right_after_submit_and_twice(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(t):
            time.sleep(t)
            return t
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid in range(4):
            await ex.submit("c1", uid, args(30))
            assert await ex.cancel("c1", uid, grace=GRACE)
            await ex.cancel("c1", uid, grace=0)  # a second cancel changes nothing
        for uid in range(4):
            out = await ev.done(uid, timeout=10)
            assert out.status == JobStatus.Cancelled
        await ex.submit("c1", 9, args(0))  # the CPUs are free again
        assert S.loads((await ev.done(9)).result) == 0
        await asyncio.sleep(0.3)
        assert ev.done_count == {0: 1, 1: 1, 2: 1, 3: 1, 9: 1}

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_cancelled_program_computation(cls: Any, tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("import time\ntime.sleep(60)\n")
    spec = make_spec(tmp_path, kind="program", program="prog.py")

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args())
        await asyncio.sleep(0.5)
        assert await ex.cancel("c1", 1, grace=GRACE)
        out = await ev.done(1, timeout=10)
        assert out.status == JobStatus.Cancelled

    run(with_executor(cls, spec, body))


def test_default_grace_is_five_seconds() -> None:
    assert host.CANCEL_GRACE == client.CANCEL_GRACE == 5.0
    for cls in (ForkExecutor, SpawnExecutor):
        assert inspect.signature(cls.cancel).parameters["grace"].default == 5.0


class SlowToLoad:
    """A dependency whose loading takes seconds (unpickling it sleeps)."""

    def __reduce__(self) -> tuple[Any, tuple[float]]:
        return time.sleep, (3.0,)


def test_spawned_job_cancelled_while_its_process_still_loads_is_cancelled(tmp_path: Path) -> None:
    """The KeyboardInterrupt lands while the spawned process loads the computation: Cancelled, not a
    load failure."""
    ns = main_funcs("""
        def comp():
            return 1
    """)
    spec = make_spec(tmp_path, ns["comp"], depends_code=S.dumps([SlowToLoad()]))

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args())  # its process is still loading SlowToLoad
        await asyncio.sleep(0.5)
        assert await ex.cancel("c1", 1, grace=5)
        out = await ev.done(1, timeout=10)
        assert out.status == JobStatus.Cancelled, out.exception
        assert "KeyboardInterrupt" in out.exception

    run(with_executor(SpawnExecutor, spec, body))
