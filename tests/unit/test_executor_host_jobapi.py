"""What a job calls, in both executors with real processes: ``dispy_provisional_result`` (in order,
none lost, before the job's end) and ``dispy_send_file`` (names, failures, size bound)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_executor_host_executors import (  # noqa: F401 - the autouse fixtures apply here too
    EXECUTORS,
    Events,
    _importable_tests,
    _no_leftovers,
    args,
    main_funcs,
    make_spec,
    run,
)

from dispy_core.interfaces import JobExecutor, JobOutcome
from dispy_core.status import JobStatus
from dispy_plugins.executor_host import runtime
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

S = PickleSerializer()


class OrderedEvents(Events):
    """Also logs each job's end, to check what came before it."""

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.log.append(("done", job_uid))
        super().job_done(comp_id, job_uid, outcome)


class Config:
    def __init__(self, **values: Any) -> None:
        self.values = values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


async def run_jobs(ex: JobExecutor, spec: Any, jobs: dict[int, bytes]) -> OrderedEvents:
    ev = OrderedEvents()
    await ex.open(spec, ev)
    try:
        for uid, data in jobs.items():
            await ex.submit(spec.computation.comp_id, uid, data)
        for uid in jobs:
            await ev.done(uid)
    finally:
        await ex.shutdown()
    return ev


@pytest.mark.parametrize("cls", EXECUTORS)
def test_fifty_quick_provisional_results_in_order_before_done(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp(tag, n):
            codes = [dispy_provisional_result((tag, i, "x" * (i * 1000))) for i in range(n)]
            return tag, codes
    """)
    jobs = {uid: args(uid, 50) for uid in range(1, 4)}  # three at once, interleaving on the node
    ev = run(run_jobs(cls(), make_spec(tmp_path, ns["comp"]), jobs))
    for uid in jobs:
        out = ev.outcomes[uid]
        assert out.status == JobStatus.Finished, out.exception
        assert S.loads(out.result) == (uid, [0] * 50)
        mine = [e for e in ev.log if e[0] in ("prov", "done") and e[1] == uid]
        assert [e[2][:2] for e in mine[:-1]] == [(uid, i) for i in range(50)]  # all, in order
        assert all(e[2][2] == "x" * (e[2][1] * 1000) for e in mine[:-1])
        assert mine[-1] == ("done", uid)  # and all before the end
        assert ev.done_count[uid] == 1


@pytest.mark.parametrize("cls", EXECUTORS)
def test_provisional_result_failures_return_minus_one(cls: Any, tmp_path: Path) -> None:
    ns = main_funcs("""
        def comp():
            return (dispy_provisional_result(b"x" * 200_000),     # above the frame bound
                    dispy_provisional_result((i for i in ())),    # cannot be serialized
                    dispy_provisional_result("fine"))
    """)
    ex = cls(Config(**{"executor.max_frame": 100_000}))
    ev = run(run_jobs(ex, make_spec(tmp_path, ns["comp"]), {1: args()}))
    out = ev.outcomes[1]
    assert S.loads(out.result) == (-1, -1, 0)
    err = out.stderr.decode()
    assert "dispy_provisional_result failed: " in err and "exceed the frame bound of 100000 bytes" in err
    assert "cannot serialize the result" in err
    assert [e[2] for e in ev.log if e[0] == "prov"] == ["fine"]


SEND_SRC = """
    def comp(outside):
        os.makedirs("out/deep", exist_ok=True)
        for name, size in (("a.bin", 10), ("out/deep/b.bin", 3), ("big.bin", 11)):
            with open(name, "wb") as fh:
                fh.write(bytes(range(size)))
        os.makedirs("adir", exist_ok=True)
        codes = {
            "relative": dispy_send_file("a.bin"),
            "nested": dispy_send_file("out/deep/b.bin"),
            "absolute inside": dispy_send_file(os.path.join(dispy_job_path, "out", "deep", "b.bin")),
            "dotdot inside": dispy_send_file("out/../a.bin"),
            "outside": dispy_send_file(outside),
            "missing": dispy_send_file("missing.txt"),
            "directory": dispy_send_file("adir"),
            "too big": dispy_send_file("big.bin"),
        }
        os.chdir("out")
        codes["after chdir"] = dispy_send_file("deep/b.bin")  # relative to the job's cwd, like open()
        return codes
"""


@pytest.mark.parametrize("cls", EXECUTORS)
def test_send_file_names_failures_and_size_bound(cls: Any, tmp_path: Path) -> None:
    work = tmp_path / "comp"
    work.mkdir()
    outside = tmp_path / "elsewhere" / "report.txt"
    outside.parent.mkdir()
    outside.write_text("o")
    spec = make_spec(work, main_funcs(SEND_SRC)["comp"], extra={"max_file_size": 10})
    ev = run(run_jobs(cls(), spec, {1: args(str(outside))}))
    out = ev.outcomes[1]
    assert out.status == JobStatus.Finished, out.exception
    assert S.loads(out.result) == {"relative": 0, "nested": 0, "absolute inside": 0, "dotdot inside": 0,
                                   "outside": 0, "missing": -1, "directory": -1, "too big": -1, "after chdir": 0}
    assert [e[2:] for e in ev.log if e[0] == "file"] == [
        ("a.bin", bytes(range(10))),
        ("out/deep/b.bin", bytes(range(3))),
        ("out/deep/b.bin", bytes(range(3))),
        ("a.bin", bytes(range(10))),
        ("report.txt", b"o"),  # outside the computation's directory: its base name only
        ("out/deep/b.bin", bytes(range(3))),
    ]
    err = out.stderr.decode().splitlines()
    assert err == [
        "dispy_send_file('missing.txt') failed: No such file or directory: "
        f"'{work / 'missing.txt'}'",
        "dispy_send_file('adir') failed: not a regular file",
        "dispy_send_file('big.bin') failed: the file has 11 bytes, above the node's max_file_size of 10 bytes",
    ]
    kinds = [e[0] for e in ev.log]
    assert kinds.index("done") == len(kinds) - 1


def test_send_file_name_rules(tmp_path: Path) -> None:
    root = str(tmp_path / "w")
    assert runtime.send_file_name(f"{root}/x/y.txt", root) == (f"{root}/x/y.txt", "x/y.txt")
    assert runtime.send_file_name(f"{root}/../w2/y.txt", root) == (f"{tmp_path}/w2/y.txt", "y.txt")
    assert runtime.send_file_name("/etc/hostname", root) == ("/etc/hostname", "hostname")
    assert runtime.send_file_name(f"{root}2/y.txt", root)[1] == "y.txt"  # a sibling sharing the prefix


def test_job_api_outside_a_job_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime.dispy_provisional_result(1) == -1
    assert runtime.dispy_send_file("x") == -1
    assert "called outside a job" in capsys.readouterr().err
