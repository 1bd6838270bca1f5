"""Conformance of an executor plugin: real jobs of a small function computation, cancel, close, no leftovers.

Only the :class:`~dispy_core.interfaces.JobExecutor` protocol and a serializer from the plugin manager
are used here, never an executor's own machinery, so any third-party executor can run it.
Job arguments travel as the node passes them: ``serializer.dumps((args, kwargs))``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from dispy_core.computation import Computation
from dispy_core.config import Config
from dispy_core.errors import ExecutionError
from dispy_core.interfaces import ComputationSpec, JobExecutor, JobOutcome, Serializer
from dispy_core.status import JobStatus

__all__ = ["check_executor", "check_executor_async"]

T = TypeVar("T")
COMP_ID = "conformance-1"


def conformance_computation(mode: str, value: Any) -> Any:
    """The computation the check runs (sent by value, so the node needs no module of ours)."""
    if mode == "double":
        print("conformance job", value)
        return value * 2
    if mode == "cwd":
        import os

        return os.getcwd()
    if mode == "raise":
        raise ValueError(f"conformance error {value}")
    if mode == "sleep":
        import time

        seconds, marker = value
        with open(marker, "w") as f:
            f.write("started")
        time.sleep(seconds)
        return seconds
    raise LookupError(mode)


class _Events:
    """Records the executor's callbacks (an ExecutorEvents)."""

    def __init__(self) -> None:
        self.outcomes: dict[int, JobOutcome] = {}
        self.done_count: dict[int, int] = {}
        self.wrong_comp: list[str] = []
        self._waiters: dict[int, asyncio.Future[JobOutcome]] = {}

    def _comp(self, comp_id: str, what: str) -> None:
        if comp_id != COMP_ID:
            self.wrong_comp.append(f"{what} for computation {comp_id!r}")

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None:
        self._comp(comp_id, "job_started")

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None:
        self._comp(comp_id, "job_provisional")

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        self._comp(comp_id, "job_file")

    def node_shutdown(self, comp_id: str) -> None:
        self._comp(comp_id, "node_shutdown")

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self._comp(comp_id, "job_done")
        self.outcomes[job_uid] = outcome
        self.done_count[job_uid] = self.done_count.get(job_uid, 0) + 1
        waiter = self._waiters.pop(job_uid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    async def done(self, uid: int) -> JobOutcome:
        if uid in self.outcomes:
            return self.outcomes[uid]
        return await self._waiters.setdefault(uid, asyncio.get_running_loop().create_future())


def _children() -> dict[int, str]:
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            found[proc.pid] = " ".join(proc.cmdline())[:120] or proc.name()
        except psutil.Error:
            found[proc.pid] = "?"
    return found


def _kill(pids: list[int]) -> None:
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


class _Check:
    def __init__(self, executor: Any, serializer: Serializer, work_dir: Path, timeout: float) -> None:
        self.ex = executor
        self.s = serializer
        self.work_dir = work_dir
        self.timeout = timeout
        self.events = _Events()
        self.label = f"executor {getattr(executor, 'name', type(executor).__name__)!r}"

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"{self.label}: {what}")

    async def within(self, awaitable: Awaitable[T], what: str, timeout: float | None = None) -> T:
        try:
            return await asyncio.wait_for(awaitable, timeout or self.timeout)
        except TimeoutError:
            raise self.fail(f"{what} did not finish within {timeout or self.timeout:g} s") from None
        except AssertionError:
            raise
        except Exception as exc:
            raise self.fail(f"{what} raised {type(exc).__name__}: {exc}") from exc

    def spec(self) -> ComputationSpec:
        fn = conformance_computation
        computation = Computation(
            comp_id=COMP_ID, name="conformance", kind="function", code=self.s.dumps_code(fn),
            source=textwrap.dedent(inspect.getsource(fn)), code_name=fn.__name__,
            py_version=list(sys.version_info[:2]))
        return ComputationSpec(computation, self.work_dir, self.s.name, node_name="conformance-node",
                               node_ip_addr="127.0.0.1")

    async def submit(self, uid: int, mode: str, value: Any, nowait: bool = False) -> None:
        args = self.s.dumps(((mode, value), {}))
        if not nowait:
            await self.within(self.ex.submit(COMP_ID, uid, args), f"submit() of job {uid}")
            return
        try:
            self.ex.submit_nowait(COMP_ID, uid, args)
        except Exception as exc:
            raise self.fail(f"submit_nowait() of job {uid} raised {type(exc).__name__}: {exc}") from exc

    async def refused(self, comp_id: str, why: str) -> None:
        """submit and submit_nowait raise ExecutionError (``why``: the computation is unknown / closed)."""
        args = self.s.dumps((("double", 1), {}))
        for name in ("submit", "submit_nowait"):
            try:
                result = getattr(self.ex, name)(comp_id, 99, args)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self.timeout)
            except ExecutionError:
                continue
            except Exception as exc:
                raise self.fail(f"{name}() to a computation that is {why} raised {type(exc).__name__}, "
                                "not ExecutionError") from exc
            raise self.fail(f"{name}() to a computation that is {why} did not raise ExecutionError")

    async def outcome(self, uid: int, what: str, timeout: float | None = None) -> JobOutcome:
        outcome = await self.within(self.events.done(uid), f"job {uid} ({what}): job_done", timeout)
        if not isinstance(outcome, JobOutcome):
            raise self.fail(f"job_done for job {uid} passed {type(outcome).__name__}, not a JobOutcome")
        return outcome

    def finished(self, uid: int, outcome: JobOutcome, what: str) -> Any:
        if outcome.status != JobStatus.Finished:
            raise self.fail(f"job {uid} ({what}) ended with status {outcome.status}, not Finished "
                            f"({JobStatus.Finished}): {outcome.exception[-300:]}")
        if not (outcome.start_time > 0 and outcome.end_time >= outcome.start_time):
            raise self.fail(f"job {uid} ({what}) reports start_time {outcome.start_time} and end_time "
                            f"{outcome.end_time} (expected 0 < start_time <= end_time)")
        try:
            return self.s.loads(outcome.result)
        except Exception as exc:
            raise self.fail(f"job {uid} ({what}): its result does not load: {exc}") from exc

    async def run(self) -> None:
        if not isinstance(self.ex, JobExecutor):
            raise self.fail("does not follow the JobExecutor protocol (name, open, submit, cancel, close, shutdown)")
        if not isinstance(getattr(self.ex, "name", None), str) or not self.ex.name:
            raise self.fail("name should be a non-empty str")
        await self.refused("no-such-computation", "not open")
        await self.within(self.ex.open(self.spec(), self.events), "open() of a function computation")
        await self.jobs()
        await self.cancel()
        await asyncio.sleep(0.2)  # a second job_done would arrive about now
        twice = sorted(uid for uid, count in self.events.done_count.items() if count > 1)
        if twice:
            raise self.fail(f"job_done was called more than once for jobs {twice}")
        if self.events.wrong_comp:
            raise self.fail(f"callbacks named the wrong computation: {self.events.wrong_comp[0]}")
        await self.within(self.ex.close(COMP_ID), "close() of the computation")
        await self.refused(COMP_ID, "closed")

    async def jobs(self) -> None:
        uids = range(1, 6)
        for uid in uids:
            await self.submit(uid, "double", uid, nowait=uid > 3)
        for uid in uids:
            outcome = await self.outcome(uid, "a function returning its argument doubled")
            result = self.finished(uid, outcome, "doubling")
            if result != uid * 2:
                raise self.fail(f"job {uid} returned {result!r}, expected {uid * 2}")
            if f"conformance job {uid}".encode() not in outcome.stdout:
                raise self.fail(f"job {uid}'s stdout {outcome.stdout[:80]!r} lacks what it printed")
        await self.submit(10, "cwd", None)
        cwd = self.finished(10, await self.outcome(10, "returning os.getcwd()"), "returning os.getcwd()")
        if os.path.realpath(cwd) != os.path.realpath(self.work_dir):
            raise self.fail(f"a job ran in {cwd!r}, not in the computation's work_dir {str(self.work_dir)!r}")
        await self.submit(11, "raise", 7)
        failed = await self.outcome(11, "raising ValueError")
        if failed.status != JobStatus.Terminated or "conformance error 7" not in failed.exception:
            raise self.fail(f"a job raising ValueError('conformance error 7') ended with status {failed.status} "
                            f"and exception {failed.exception[-200:]!r} (expected Terminated "
                            f"({JobStatus.Terminated}) and the error in the exception text)")

    async def cancel(self) -> None:
        uid, marker = 20, self.work_dir / "started-20"
        await self.submit(uid, "sleep", (120, str(marker)))
        deadline = time.monotonic() + self.timeout
        while not marker.exists():
            if uid in self.events.outcomes:
                raise self.fail(f"a job sleeping 120 s ended at once: {self.events.outcomes[uid]}")
            if time.monotonic() > deadline:
                raise self.fail(f"a submitted job did not start within {self.timeout:g} s")
            await asyncio.sleep(0.02)
        started = time.monotonic()
        if await self.within(self.ex.cancel(COMP_ID, uid, grace=0.5), "cancel() of a running job") is not True:
            raise self.fail("cancel() of a running job did not return True")
        outcome = await self.outcome(uid, "cancelled while sleeping 120 s", timeout=10)
        if outcome.status not in (JobStatus.Cancelled, JobStatus.Terminated):
            raise self.fail(f"a cancelled job ended with status {outcome.status}, not Cancelled "
                            f"({JobStatus.Cancelled}) or Terminated ({JobStatus.Terminated})")
        if time.monotonic() - started > 8:
            raise self.fail("a cancelled job took more than 8 s to end (grace was 0.5 s)")
        for unknown in (uid, 999):
            if await self.within(self.ex.cancel(COMP_ID, unknown, grace=0.5), f"cancel() of job {unknown}"):
                raise self.fail(f"cancel() of job {unknown}, which is not running, returned True (expected False)")


async def check_executor_async(make_executor: Callable[[], JobExecutor], serializer: Serializer | None = None,
                               timeout: float = 30.0) -> None:
    """Run the executor checks in the running event loop; AssertionError names what went wrong.

    Checks: ``make_executor()`` follows the JobExecutor protocol with a str ``name``; ``open`` of a
    function computation (code by value from the serializer, with a source fallback) succeeds in a
    fresh work_dir; five jobs (by ``submit`` and ``submit_nowait``) each get exactly one ``job_done``
    with a Finished outcome, the right result, their stdout and sane start/end times; a job runs in
    ``work_dir``; a job raising ends Terminated with the error text; ``cancel`` of a running job
    returns True and its outcome is Cancelled or Terminated within seconds; ``cancel`` of an ended or
    unknown job returns False; callbacks name the right computation; ``close`` returns; ``submit`` and
    ``submit_nowait`` raise ExecutionError for a computation not open yet, and after ``close``; after
    ``shutdown`` no child process of this process is left (checked with psutil; leftovers are killed,
    then reported).

    ``serializer`` defaults to the configured one, ``DispyPluginManager(Config()).make_serializer()``.
    """
    if serializer is None:
        from dispy_core.pluginmanager import DispyPluginManager

        serializer = DispyPluginManager(Config(), roles=("serializer",)).make_serializer()
    before = set(_children())
    executor = make_executor()
    failure: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="dispy-conformance-") as tmp:
        work_dir = Path(tmp) / "computation"
        work_dir.mkdir()
        check = _Check(executor, serializer, work_dir, timeout)
        try:
            await check.run()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                await check.within(executor.shutdown(), "shutdown()")
            except AssertionError:
                if failure is None:
                    raise
            leftovers = await _leftovers(before)
            if leftovers and failure is None:
                shown = "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(leftovers.items()))
                raise check.fail(f"processes left after shutdown() (now killed): {shown}")


async def _leftovers(before: set[int]) -> dict[int, str]:
    """New child processes still there once none has gone for a second (5 s at most); killed."""
    deadline = time.monotonic() + 5
    left = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    changed = time.monotonic()
    while left and time.monotonic() < min(deadline, changed + 1.0):
        await asyncio.sleep(0.05)
        now = {pid: cmd for pid, cmd in _children().items() if pid not in before}
        if now.keys() != left.keys():
            changed = time.monotonic()
        left = now
    _kill(list(left))
    return left


def check_executor(make_executor: Callable[[], JobExecutor], serializer: Serializer | None = None,
                   timeout: float = 30.0) -> None:
    """:func:`check_executor_async` in a new event loop (call it from a plain test function)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("check_executor() was called inside an event loop: await check_executor_async()")
    asyncio.run(check_executor_async(make_executor, serializer, timeout))
