"""Setup and cleanup in both executors, with real host and job processes: setup's return value (0, 1, 2)
and what jobs see of its globals, failures with their reasons, cleanup and its failures, and
``dispynode_logger`` reaching the node's log."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from test_executor_host_executors import (  # noqa: F401 - the autouse fixtures apply here too
    EXECUTORS,
    Events,
    _importable_tests,
    _no_leftovers,
    args,
    double,
    main_funcs,
    make_spec,
    run,
)

from dispy_core.errors import ExecutionError, SetupError
from dispy_core.status import JobStatus
from dispy_plugins.executor_fork.executor import ForkExecutor
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

S = PickleSerializer()

SETUP_SRC = """
    def setup(n, label, marker_dir, result):
        global data, name, stream, setup_cwd
        data = list(range(n))             # in-memory data every job reads
        name = label
        stream = (i for i in range(3))    # a generator cannot be shipped (serialized) to a job
        setup_cwd = os.getcwd()
        os.chdir(marker_dir)              # jobs must still start in the computation's directory
        dispynode_logger.info("setup built %d items", len(data))
        return result

    def comp(i):
        g = globals()
        return (len(data), data[i], name, "stream" in g, setup_cwd, os.getcwd(), os.getpid())

    def cleanup(n, label, marker_dir, result):
        global data
        found = "data" in globals() and len(data) == n and "stream" in globals()
        with open(os.path.join(marker_dir, f"cleanup-{result}.txt"), "w") as fh:
            fh.write(f"{label} {found} {os.getcwd()}")
        del data
"""

N = 200_000


def setup_spec(tmp_path: Path, result: Any, **kw: Any) -> Any:
    ns = main_funcs(SETUP_SRC)
    work = tmp_path / "comp"
    work.mkdir(exist_ok=True)
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    return make_spec(work, ns["comp"], setup=S.dumps_code(ns["setup"]), cleanup=S.dumps_code(ns["cleanup"]),
                     setup_args=S.dumps((N, "lbl", str(markers), result)), **kw), work, markers


@pytest.mark.parametrize("cls", EXECUTORS)
@pytest.mark.parametrize("result", [0, 1, 2])
def test_setup_result_chooses_how_jobs_see_globals(cls: Any, result: int, tmp_path: Path) -> None:
    spec, work, markers = setup_spec(tmp_path, result)

    async def go() -> None:
        ex, ev = cls(), Events()
        await ex.open(spec, ev)
        for uid in range(4):
            await ex.submit("c1", uid, args(uid * 1000))
        pids = set()
        for uid in range(4):
            out = await ev.done(uid)
            assert out.status == JobStatus.Finished, out.exception
            size, item, name, has_stream, setup_cwd, job_cwd, pid = S.loads(out.result)
            assert (size, item, name) == (N, uid * 1000, "lbl")  # setup's data, in every job
            assert setup_cwd == job_cwd == str(work)  # setup and jobs run in the computation's directory
            # Only fork jobs of 0/2 share the host's objects; shipped globals (1, spawn) are copies,
            # and what cannot be serialized stays behind.
            assert has_stream is (cls is ForkExecutor and result in (0, 2))
            pids.add(pid)
        assert len(pids) == 4  # one process per job
        await ex.close("c1")
        # cleanup ran once, after the jobs, with setup_args, in the computation's directory, and saw
        # setup's globals (also the ones put aside for shipping)
        assert (markers / f"cleanup-{result}.txt").read_text() == f"lbl True {work}"
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
@pytest.mark.parametrize(("value", "expect"), [
    ("5", "setup returned 5; expected 0, 1 or 2"),
    ("None", "setup returned None; expected 0, 1 or 2"),
    ("True", "setup returned True; expected 0, 1 or 2"),
    ("'0'", "setup returned '0'; expected 0, 1 or 2"),
])
def test_setup_bad_return_value(cls: Any, value: str, expect: str, tmp_path: Path) -> None:
    ns = main_funcs(f"def setup():\n    return {value}\n")
    spec = make_spec(tmp_path, double, setup=S.dumps_code(ns["setup"]))

    async def go() -> None:
        ex = cls()
        with pytest.raises(SetupError) as info:
            await ex.open(spec, Events())
        assert str(info.value) == expect
        with pytest.raises(ExecutionError):
            await ex.submit("c1", 1, args(1))
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
def test_setup_exception_carries_its_traceback(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def load(path):
            raise FileNotFoundError(f"no data in {path}")
        def setup(path):
            load(path)
            return 0
    """)
    spec = make_spec(tmp_path, double, setup=S.dumps_code(ns["setup"]), setup_args=S.dumps(("x.csv",)))

    async def go() -> None:
        ex = cls()
        with pytest.raises(SetupError) as info:
            await ex.open(spec, Events())
        text = str(info.value)
        assert text.startswith("setup raised an exception:\nTraceback")
        assert "in load" in text and "FileNotFoundError: no data in x.csv" in text
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
def test_setup_timeout_is_the_specs_and_stops_setup(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def setup(t):
            time.sleep(t)
            return 0
    """)

    async def go() -> None:
        ex = cls()
        slow = make_spec(tmp_path, double, setup=S.dumps_code(ns["setup"]), setup_args=S.dumps((30,)),
                         setup_timeout=0.5)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(SetupError) as info:
            await ex.open(slow, Events())
        assert asyncio.get_running_loop().time() - t0 < 5
        assert "setup did not finish within 0.5 s" in str(info.value)
        assert "setup_timeout" in str(info.value)
        # a longer limit lets the same kind of setup finish
        ok = make_spec(tmp_path, double, comp_id="c2", setup=S.dumps_code(ns["setup"]),
                       setup_args=S.dumps((0.3,)), setup_timeout=10)
        ev = Events()
        await ex.open(ok, ev)
        await ex.submit("c2", 1, args(2))
        assert S.loads((await ev.done(1)).result) == 4
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
def test_cleanup_exception_is_logged_not_fatal(cls: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    ns = main_funcs("""
        def cleanup():
            return 1 / 0
        def comp(x):
            return x + 1
    """)
    spec = make_spec(tmp_path, ns["comp"], cleanup=S.dumps_code(ns["cleanup"]))

    async def go() -> None:
        ex, ev = cls(), Events()
        await ex.open(spec, ev)
        await ex.submit("c1", 1, args(1))
        assert S.loads((await ev.done(1)).result) == 2
        with caplog.at_level(logging.WARNING, logger="dispy.node.executor"):
            await ex.close("c1")  # does not raise
        # the node can host the next computation
        await ex.open(make_spec(tmp_path, ns["comp"], comp_id="c2"), ev)
        await ex.submit("c2", 2, args(5))
        assert S.loads((await ev.done(2)).result) == 6
        await ex.shutdown()

    run(go())
    assert "cleanup raised an exception" in caplog.text and "ZeroDivisionError" in caplog.text
    err = capfd.readouterr().err  # the host's own log line, on the node's stderr
    assert "cleanup raised an exception" in err and "ZeroDivisionError: division by zero" in err


@pytest.mark.parametrize("cls", EXECUTORS)
def test_cleanup_true_or_false_runs_nothing(cls: Any, tmp_path: Path) -> None:
    async def go() -> None:
        ex, ev = cls(), Events()
        await ex.open(make_spec(tmp_path, double), ev)  # a client's cleanup=True/False sends no function
        await ex.submit("c1", 1, args(3))
        assert S.loads((await ev.done(1)).result) == 6
        await ex.close("c1")
        await ex.shutdown()

    run(go())


@pytest.mark.parametrize("cls", EXECUTORS)
def test_dispynode_logger_goes_to_the_nodes_log(cls: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ns = main_funcs("""
        def setup():
            dispynode_logger.info("setup says hi")
            return 0
        def comp(x):
            dispynode_logger.info("job %s says hi", x)
            dispynode_logger.warning("job %s warns", x)
            print("to the job's stdout")
            return dispynode_logger.name
    """)
    spec = make_spec(tmp_path, ns["comp"], setup=S.dumps_code(ns["setup"]))

    async def go() -> Any:
        ex, ev = cls(), Events()
        await ex.open(spec, ev)
        await ex.submit("c1", 7, args(7))
        out = await ev.done(7)
        await ex.shutdown()
        return out

    out = run(go())
    assert out.status == JobStatus.Finished, out.exception
    assert S.loads(out.result) == "dispynode"
    assert out.stderr == b"" and out.stdout == b"to the job's stdout\n"  # not captured into the job
    err = capfd.readouterr().err
    assert re.search(r" dispynode INFO \[host \d+\] setup says hi$", err, re.MULTILINE), err
    assert re.search(r" dispynode INFO \[job \d+\] job 7 says hi$", err, re.MULTILINE), err
    assert re.search(r" dispynode WARNING \[job \d+\] job 7 warns$", err, re.MULTILINE), err
