"""Both node-side executors, with real host and job processes: results, output, crashes, cancel,
setup/cleanup, provisional results, files, programs, host death and a clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from dispy_core import computation
from dispy_core.computation import Computation
from dispy_core.errors import ExecutionError, SetupError
from dispy_core.interfaces import ComputationSpec, JobExecutor, JobOutcome
from dispy_core.status import JobStatus
from dispy_plugins.executor_fork.executor import ForkExecutor
from dispy_plugins.executor_host import namespace
from dispy_plugins.executor_spawn_windows.executor import SpawnExecutor
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

S = PickleSerializer()
EXECUTORS = [pytest.param(ForkExecutor, id="fork"), pytest.param(SpawnExecutor, id="spawn")]


def double(x: int) -> int:
    """A function of an importable module: travels by reference."""
    return x * 2


def main_funcs(source: str) -> dict[str, Any]:
    """Functions as a client's ``__main__`` defines them (so dill sends them by value)."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(source), ns)
    return ns


class Events:
    """Records every callback; ``done(uid)`` waits for a job's outcome."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.outcomes: dict[int, JobOutcome] = {}
        self.done_count: dict[int, int] = {}
        self._waiters: dict[int, asyncio.Future[JobOutcome]] = {}
        self._prov_waiters: list[tuple[int, asyncio.Future[Any]]] = []

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None:
        self.log.append(("started", job_uid, start_time))

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None:
        value = S.loads(result)
        self.log.append(("prov", job_uid, value))
        for uid, fut in list(self._prov_waiters):
            if uid == job_uid and not fut.done():
                fut.set_result(value)
                self._prov_waiters.remove((uid, fut))

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        self.log.append(("file", job_uid, relpath, data))

    def node_shutdown(self, comp_id: str) -> None:
        self.log.append(("shutdown", comp_id))

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.outcomes[job_uid] = outcome
        self.done_count[job_uid] = self.done_count.get(job_uid, 0) + 1
        fut = self._waiters.pop(job_uid, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    async def done(self, uid: int, timeout: float = 20.0) -> JobOutcome:
        if uid in self.outcomes:
            return self.outcomes[uid]
        fut = self._waiters.setdefault(uid, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, timeout)

    async def provisional(self, uid: int, timeout: float = 20.0) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._prov_waiters.append((uid, fut))
        return await asyncio.wait_for(fut, timeout)


def make_spec(work_dir: Path, fn: Any = None, **kw: Any) -> ComputationSpec:
    """A spec for ``fn``; ``kw`` sets fields of its record (Computation) or of the spec itself."""
    record: dict[str, Any] = {"comp_id": "c1", "name": "comp", "kind": "function",
                              "code": S.dumps_code(fn) if fn is not None else b""}
    record.update((name, kw.pop(name)) for name in list(kw) if name in computation.NAMES)
    record["py_version"] = list(record.get("py_version", sys.version_info[:2]))
    return ComputationSpec(Computation(**record), work_dir, "pickle", node_name="node-x", node_ip_addr="127.0.0.9",
                           **kw)


def args(*a: Any, **k: Any) -> bytes:
    return S.dumps((a, k))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host processes import this module to load functions pickled by reference (like an installed module)."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process().children(recursive=True) == []


async def with_executor(cls: Callable[[], JobExecutor], spec: ComputationSpec,
                        body: Callable[[JobExecutor, Events], Coroutine[Any, Any, Any]]) -> Any:
    ex, ev = cls(), Events()
    await ex.open(spec, ev)
    try:
        return await body(ex, ev)
    finally:
        await ex.shutdown()


@pytest.mark.parametrize("cls", EXECUTORS)
def test_function_by_reference_and_closure_by_value(cls: Any, tmp_path: Path) -> None:
    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args(21))
        out = await ev.done(1)
        assert out.status == JobStatus.Finished, out.exception
        assert S.loads(out.result) == 42
        assert out.start_time <= out.end_time
        assert ("started", 1, out.start_time) in ev.log or any(e[:2] == ("started", 1) for e in ev.log)

    run(with_executor(cls, make_spec(tmp_path, double), body))

    offset = 100
    closure = lambda x, y=1: x + y + offset  # noqa: E731

    async def body2(ex: JobExecutor, ev: Events) -> None:
        for uid in range(3):
            await ex.submit("c1", uid, args(uid, y=10))
        for uid in range(3):
            out = await ev.done(uid)
            assert out.status == JobStatus.Finished, out.exception
            assert S.loads(out.result) == uid + 110
        assert all(count == 1 for count in ev.done_count.values())

    run(with_executor(cls, make_spec(tmp_path, closure), body2))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_output_exception_and_unserializable_result(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        import sys
        def comp(mode):
            print("to stdout", mode)
            print("to stderr é", file=sys.stderr)
            if mode == "raise":
                raise ValueError("bad input 7")
            if mode == "unpicklable":
                return (i for i in range(3))
            return mode
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid, mode in enumerate(["ok", "raise", "unpicklable"]):
            await ex.submit("c1", uid, args(mode))
        ok, bad, unpick = await ev.done(0), await ev.done(1), await ev.done(2)
        assert ok.status == JobStatus.Finished and S.loads(ok.result) == "ok"
        assert ok.stdout == b"to stdout ok\n" and ok.stderr == "to stderr é\n".encode()
        assert bad.status == JobStatus.Terminated and S.loads(bad.result) is None
        assert "ValueError: bad input 7" in bad.exception and "Traceback" in bad.exception
        assert bad.stdout == b"to stdout raise\n"
        assert unpick.status == JobStatus.Terminated and "cannot be serialized" in unpick.exception

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_crashing_job_reported_at_once_and_executor_goes_on(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        import os, signal
        def comp(how):
            if how == "exit":
                os._exit(3)
            if how == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return how
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid, how in enumerate(["exit", "segv", "kill", "fine"]):
            t0 = time.monotonic()
            await ex.submit("c1", uid, args(how))
            out = await ev.done(uid, timeout=5)
            assert time.monotonic() - t0 < 3
            if how == "fine":
                assert out.status == JobStatus.Finished and S.loads(out.result) == "fine"
            else:
                assert out.status == JobStatus.Terminated
        assert ev.outcomes[0].exception == "job process exited with status 3"
        assert ev.outcomes[1].exception == "job process killed by signal SIGSEGV"
        assert ev.outcomes[2].exception == "job process killed by signal SIGKILL"

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_cancel_kills_job_and_grandchild(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        import os, signal, subprocess, time
        def comp(mode):
            if mode == "catch":
                try:
                    dispy_provisional_result((os.getpid(), 0))
                    time.sleep(60)
                except KeyboardInterrupt:
                    return 42
            if mode == "ignore":
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            child = subprocess.Popen(["sleep", "60"])
            dispy_provisional_result((os.getpid(), child.pid))
            time.sleep(60)
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        for uid, mode in enumerate(["plain", "ignore", "catch"]):
            waiter = asyncio.ensure_future(ev.provisional(uid))
            await ex.submit("c1", uid, args(mode))
            job_pid, child_pid = await waiter
            t0 = time.monotonic()
            assert await ex.cancel("c1", uid, grace=0.3)
            out = await ev.done(uid, timeout=10)
            assert time.monotonic() - t0 < 3
            if mode == "catch":
                assert out.status == JobStatus.Finished and S.loads(out.result) == 42
            else:
                assert out.status == JobStatus.Cancelled
                deadline = time.monotonic() + 2
                while not (gone(job_pid) and gone(child_pid)) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert gone(job_pid) and gone(child_pid)
        assert not await ex.cancel("c1", 0)
        assert not await ex.cancel("c1", 999)

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


SETUP_SRC = """
    def setup(base, name):
        global data, label
        data = list(range(base))
        label = name
        return 0

    def comp(i):
        return data[i] + len(label), dispy_job_path, dispy_node_name, dispy_node_ip_addr, \\
            os.getcwd(), sys.version_info[0], time.time() > 0, dispynode_logger.name

    def cleanup(base, name):
        with open("cleanup.txt", "w") as fh:
            fh.write(f"{name} {len(data)}")
"""


@pytest.mark.parametrize("cls", EXECUTORS)
def test_setup_globals_injected_names_and_cleanup(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs(SETUP_SRC)
    spec = make_spec(tmp_path, ns["comp"], setup=S.dumps_code(ns["setup"]), cleanup=S.dumps_code(ns["cleanup"]),
                     setup_args=S.dumps((10, "abc")))

    async def go() -> None:
        ex, ev = cls(), Events()
        await ex.open(spec, ev)
        await ex.submit("c1", 1, args(4))
        out = await ev.done(1)
        assert out.status == JobStatus.Finished, out.exception
        assert S.loads(out.result) == (7, str(tmp_path), "node-x", "127.0.0.9", str(tmp_path), 3, True,
                                       "dispynode")
        await ex.close("c1")
        assert (tmp_path / "cleanup.txt").read_text() == "abc 10"
        with pytest.raises(ExecutionError):
            await ex.submit("c1", 2, args(1))

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
@pytest.mark.parametrize(("source", "expect"), [
    ("def setup():\n    return 5\n", "setup returned 5"),
    ("def setup():\n    raise RuntimeError('no data here')\n", "RuntimeError: no data here"),
    ("import time\ndef setup():\n    time.sleep(30)\n    return 0\n", "did not finish within 0.5 s"),
])
def test_setup_failures(cls: Any, tmp_path: Path, source: str, expect: str) -> None:
    ns = main_funcs(source)
    spec = make_spec(tmp_path, double, setup=S.dumps_code(ns["setup"]), setup_timeout=0.5)

    async def go() -> None:
        ex = cls()
        with pytest.raises(SetupError, match=expect):
            await ex.open(spec, Events())
        with pytest.raises(ExecutionError):
            await ex.submit("c1", 1, args(1))
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
def test_provisional_results_in_order_and_send_file(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(n):
            for i in range(n):
                dispy_provisional_result(i)
            os.makedirs("sub", exist_ok=True)
            with open("sub/data.bin", "wb") as fh:
                fh.write(b"\\x00payload")
            with open(os.path.join(os.path.dirname(dispy_job_path), "outside.txt"), "w") as fh:
                fh.write("o")
            return (dispy_send_file("sub/data.bin"),
                    dispy_send_file(os.path.join(os.path.dirname(dispy_job_path), "outside.txt")),
                    dispy_send_file("missing.txt"))
    """)
    work = tmp_path / "work"
    work.mkdir()

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 5, args(20))
        out = await ev.done(5)
        assert out.status == JobStatus.Finished, out.exception
        assert S.loads(out.result) == (0, 0, -1)
        assert [e[2] for e in ev.log if e[0] == "prov"] == list(range(20))
        files = [e[2:] for e in ev.log if e[0] == "file"]
        assert files == [("sub/data.bin", b"\x00payload"), ("outside.txt", b"o")]
        kinds = [e[0] for e in ev.log]
        assert kinds.index("started") < kinds.index("prov")

    run(with_executor(cls, make_spec(work, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_program_computation(cls: Any, tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import sys
        print("args", sys.argv[1:])
        print("err", file=sys.stderr)
        sys.exit(int(sys.argv[1]))
    """))
    spec = make_spec(tmp_path, kind="program", program="prog.py")

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args("4", "x y"))
        await ex.submit("c1", 2, args("0"))
        first, second = await ev.done(1), await ev.done(2)
        assert first.status == JobStatus.Finished and S.loads(first.result) == 4
        assert first.stdout == b"args ['4', 'x y']\n" and first.stderr == b"err\n"
        assert S.loads(second.result) == 0

    run(with_executor(cls, spec, body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_depends_and_source_fallback(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        class Point:
            def __init__(self, x):
                self.x = x
        def helper(p):
            return p.x * 3
    """)
    source = "def comp(p):\n    return helper(p), type(p).__name__\n"
    spec = make_spec(tmp_path, None, source=source, code_name="comp", py_version=(3, 0),
                     depends_code=S.dumps_code([ns["Point"], ns["helper"], ("origin", ns["Point"](0))]))
    point = ns["Point"](5)

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, S.dumps_code(((point,), {})))
        out = await ev.done(1)
        assert out.status == JobStatus.Finished, out.exception
        assert S.loads(out.result) == (15, "Point")

    run(with_executor(cls, spec, body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_host_death_terminates_jobs_and_refuses_submits(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(t):
            time.sleep(t)
            return os.getppid()
    """)

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args(0))
        first = await ev.done(1)
        host_pid = S.loads(first.result)
        if psutil.Process(host_pid).ppid() != os.getpid():  # the zygote forked the job: the host is its parent
            host_pid = psutil.Process(host_pid).ppid()
        assert isinstance(ex, ForkExecutor | SpawnExecutor)
        await ex.submit("c1", 2, args(60))
        await asyncio.sleep(0.2)
        os.kill(host_pid, signal.SIGKILL)
        out = await ev.done(2, timeout=5)
        assert out.status == JobStatus.Terminated
        assert "host process killed by signal SIGKILL" in out.exception
        with pytest.raises(ExecutionError, match="cannot run jobs"):
            await ex.submit("c1", 3, args(0))

    run(with_executor(cls, make_spec(tmp_path, ns["comp"]), body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_close_waits_terminate_kills_and_shutdown_leaves_nothing(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(t):
            time.sleep(t)
            return t
    """)

    async def go() -> None:
        ex, ev = cls(), Events()
        await ex.open(make_spec(tmp_path, ns["comp"], comp_id="a"), ev)
        await ex.open(make_spec(tmp_path, ns["comp"], comp_id="b"), ev)
        await ex.submit("a", 1, args(0.3))
        await ex.close("a")
        assert ev.outcomes[1].status == JobStatus.Finished
        await ex.submit("b", 2, args(60))
        await ex.submit("b", 3, args(60))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await ex.shutdown()
        assert time.monotonic() - t0 < 5
        assert ev.outcomes[2].status == JobStatus.Cancelled and ev.outcomes[3].status == JobStatus.Cancelled
        assert psutil.Process().children(recursive=True) == []

    run(go())


PROBE = """
def probe():
    import sys
    return sorted(name for name in ("threading", "logging", "stevedore", "pluggy", "importlib.metadata")
                  if name in sys.modules)
"""


@pytest.mark.parametrize("cls", EXECUTORS)
def test_serializer_comes_from_its_plugin_and_jobs_stay_lean(cls: Any, tmp_path: Path) -> None:
    """The serializer is made by its plugin through the plugin manager (by the name in the spec, not from
    a class path), in the node; host and jobs get it pickled, so no job process loads stevedore or pluggy,
    and a forked one not even ``threading`` (whose at-fork handler would cost every fork)."""
    spec = make_spec(tmp_path, source=PROBE, code_name="probe", options={"source_complete": True})

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args())
        out = await ev.done(1)
        assert out.status == JobStatus.Finished, out.exception
        loaded = S.loads(out.result)
        assert "stevedore" not in loaded and "pluggy" not in loaded and "importlib.metadata" not in loaded
        if cls is ForkExecutor:
            assert loaded == []

    run(with_executor(cls, spec, body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_a_serializer_that_cannot_be_pickled_is_built_by_the_host(cls: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace, "serializer_blob", lambda serializer: b"")
    spec = make_spec(tmp_path, source=PROBE, code_name="probe", options={"source_complete": True})

    async def body(ex: JobExecutor, ev: Events) -> None:
        await ex.submit("c1", 1, args())
        out = await ev.done(1)
        assert out.status == JobStatus.Finished, out.exception
        assert "stevedore" in S.loads(out.result)  # the host (and a spawned job) built a plugin manager

    run(with_executor(cls, spec, body))


@pytest.mark.parametrize("cls", EXECUTORS)
def test_unknown_serializer_fails_setup_with_the_installed_names(cls: Any, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, source=PROBE, code_name="probe", options={"source_complete": True})
    spec.serializer = "no-such-serializer"

    async def body(ex: JobExecutor, ev: Events) -> None:
        raise AssertionError("opened")

    with pytest.raises(SetupError, match="no serializer plugin named 'no-such-serializer'.*pickle"):
        run(with_executor(cls, spec, body))
