"""``cluster.submit(..., dispy_job_depends=[...])`` with functions, classes, instances, modules and files,
against real dispynode processes: the job sees them as globals, the next job in the same process does
not, their files leave with the job, and bad depends are refused at submit with the reason."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]
PROGRAMS = Path(__file__).parent / "programs"


def probe(x: int) -> tuple[int, list[str], Any]:
    """The names of per-job depends this job sees, and what they compute when it has both."""
    names = globals()
    seen = sorted(name for name in ("JobPoint", "job_helper") if name in names)
    value = job_helper(JobPoint(x, 2).norm2()) if len(seen) == 2 else None  # type: ignore[name-defined] # noqa: F821
    return os.getpid(), seen, value  # type: ignore[name-defined] # noqa: F821


def import_value(name: str) -> tuple[int, Any, list[str]]:
    """The module's VALUE (None if it cannot be imported) and what the computation's directory holds."""
    import importlib

    try:
        value = importlib.import_module(name).VALUE
    except ImportError:
        value = None
    return os.getpid(), value, sorted(os.listdir("."))  # type: ignore[name-defined] # noqa: F821


def per_job_code() -> tuple[type, Callable[[int], int]]:
    """A class and a function that exist nowhere on the node and are no globals of this module: only a
    job's own depends can bring them (the computation cannot carry them along)."""

    class JobPoint:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x * self.x + self.y * self.y

    def job_helper(v: int) -> int:
        return v * 10

    return JobPoint, job_helper


def finished(job: dispy.DispyJob | None) -> Any:
    assert job is not None
    result = job(timeout=60)
    assert job.status == dispy.DispyJob.Finished, job.exception
    return result


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_own_functions_and_classes_reach_that_job_only(node_factory: Factory, executor: str) -> None:
    node = node_factory("--executor", executor, "-c", "1")
    job_point, job_helper = per_job_code()
    with dispy.JobCluster(probe, nodes=["127.0.0.1"], dispy_port=node.base_port, jobs_per_process=5) as cluster:
        pid, seen, value = finished(cluster.submit(3, dispy_job_depends=[job_point, job_helper]))
        assert (seen, value) == (["JobPoint", "job_helper"], 130)  # (3*3 + 2*2) * 10
        pid2, seen, value = finished(cluster.submit(3))
        assert pid2 == pid, "the second job must run in the first job's process for this test to mean anything"
        assert (seen, value) == ([], None)
        pid3, seen, value = finished(cluster.submit(4, dispy_job_depends=[job_helper]))
        assert (pid3, seen, value) == (pid, ["job_helper"], None)
        pid4, seen, _ = finished(cluster.submit(5, dispy_job_depends=[job_point, job_helper]))
        assert (pid4, seen) == (pid, ["JobPoint", "job_helper"])


def test_instances_of_own_classes_load_as_arguments_from_main(node: NodeProcess, tmp_path: Path) -> None:
    module_dir, other_dir = tmp_path / "mods", tmp_path / "other"
    module_dir.mkdir()
    other_dir.mkdir()
    (module_dir / "job_mod.py").write_text("VALUE = 7\n")
    (other_dir / "job_mod.py").write_text("VALUE = 8\n")  # same size: only fresh bytecode tells them apart
    proc = subprocess.run([sys.executable, str(PROGRAMS / "job_depends_main.py"), str(node.base_port),
                           str(module_dir), str(other_dir / "job_mod.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " " in line}
    first, second, third = (eval(lines[key].rsplit(" ", 2)[0]) for key in ("FIRST", "SECOND", "THIRD"))
    assert lines["FIRST"].endswith(" 11 None"), proc.stdout + proc.stderr
    # norm2(1,2)=5, scale_up(1)=100, job_mod.VALUE=7, OFFSET=1000
    assert first[1:] == (1112, "Point"), proc.stdout
    assert second == (first[0], [], False), proc.stdout  # the same process, and nothing of the first job
    assert third == (first[0], 9 + 300 + 8 + 1000, "Point"), proc.stdout  # the third job's own job_mod


def test_own_modules_are_imported_then_forgotten_and_their_files_removed(
        node_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = node_factory("-c", "1", env={"PYTHONDONTWRITEBYTECODE": ""})  # jobs write bytecode, as by default
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    (first_dir / "jd_mod.py").write_text("VALUE = 1\n")
    (second_dir / "jd_mod.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(first_dir))
    import jd_mod  # type: ignore[import-not-found]

    monkeypatch.delitem(sys.modules, "jd_mod")
    with dispy.JobCluster(import_value, nodes=["127.0.0.1"], dispy_port=node.base_port, cleanup=False,
                          jobs_per_process=5) as cluster:
        pid, value, listing = finished(cluster.submit("jd_mod", dispy_job_depends=[jd_mod]))
        assert value == 1 and "jd_mod.py" in listing
        assert "__pycache__" in listing, "the import must have cached bytecode for this test to mean anything"
        comp_dir = node.prefix / cluster.comp_id
        assert sorted(p.name for p in comp_dir.iterdir()) == [], "the module and its bytecode leave with the job"
        pid2, value, _ = finished(cluster.submit("jd_mod"))
        assert pid2 == pid, "the second job must run in the first job's process for this test to mean anything"
        assert value is None  # neither its file nor the module the first job imported
        pid3, value, _ = finished(cluster.submit("jd_mod", dispy_job_depends=[str(second_dir / "jd_mod.py")]))
        assert (pid3, value) == (pid, 2)  # a new file of that name is imported afresh, not the first job's
        assert sorted(p.name for p in comp_dir.iterdir()) == []


class Holder:
    """An instance that cannot travel: it holds a generator."""

    def __init__(self) -> None:
        self.numbers = (i for i in range(3))


@pytest.mark.parametrize("depends, expected", [
    pytest.param(["{tmp}/missing.txt"], ["dispy_job_depends", "missing.txt", "not a readable file"], id="no-file"),
    pytest.param([Holder()], ["dispy_job_depends", "Holder", "cannot be sent", "generator"], id="unserializable"),
    pytest.param([threading.Lock()], ["dispy_job_depends", "lock", "cannot send dependency"], id="not-code"),
    pytest.param([42], ["dispy_job_depends", "cannot send dependency 42"], id="number"),
    pytest.param("{tmp}/missing.txt", ["dispy_job_depends must be a list", "str"], id="not-a-list"),
])
def test_bad_job_depends_are_refused_at_submit_with_the_reason(node: NodeProcess, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture, depends: Any,
                                                               expected: list[str]) -> None:
    if isinstance(depends, str):
        depends = depends.format(tmp=tmp_path)
    elif isinstance(depends, list):
        depends = [d.format(tmp=tmp_path) if isinstance(d, str) else d for d in depends]
    with dispy.JobCluster(probe, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        caplog.clear()
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="dispy"):
            assert cluster.submit(1, dispy_job_depends=depends) is None
        assert time.monotonic() - start < 5
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(all(part in w for part in expected) and "not submitted" in w for w in warnings), warnings
        _, seen, _ = finished(cluster.submit(1))  # the cluster goes on
        assert seen == []


def test_a_program_takes_files_per_job_but_no_code(node: NodeProcess, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "words.txt"
    data.write_text("per job\n")
    _, job_helper = per_job_code()
    with dispy.JobCluster("/bin/cat", nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        with caplog.at_level(logging.WARNING, logger="dispy"):
            assert cluster.submit("words.txt", dispy_job_depends=[job_helper]) is None
        assert any("program computation" in r.getMessage() and "job_helper" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        job = cluster.submit("words.txt", dispy_job_depends=[str(data)])
        assert job is not None and job(timeout=60) == 0, job.exception
        assert job.stdout in (b"per job\n", "per job\n")
