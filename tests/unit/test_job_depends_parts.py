"""The parts of ``dispy_job_depends``, each on its own: the argument bytes (``dispy_core.jobargs``), the
client's packing, installing and removing in a job's namespace, the job runtime, and the node removing a
job's module with its bytecode."""

from __future__ import annotations

import builtins
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from dispy_core import jobargs
from dispy_core.client.computation import describe, pack_job
from dispy_core.errors import SerializationError
from dispy_core.node.files import ComputationFiles
from dispy_core.protocol import messages as m
from dispy_plugins.executor_host import jobdepends, runtime
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

S = PickleSerializer()


def own_code() -> tuple[type, Any]:
    class Box:
        def __init__(self, value: int) -> None:
            self.value = value

    def triple(v: int) -> int:
        return v * 3

    return Box, triple


# --------------------------------------------------------------------------- the argument bytes
def test_a_job_without_code_of_its_own_keeps_the_plain_shape() -> None:
    assert jobargs.pack(S, (1, 2), {"k": 3}) == S.dumps(((1, 2), {"k": 3}))  # nodes of any version read it
    assert jobargs.job_depends(S.loads(jobargs.pack(S, (1,), {}))) is None


def test_code_rides_ahead_of_the_arguments_nested_as_bytes() -> None:
    blob = jobargs.pack(S, (1,), {"k": 2}, b"CODE", ["mod_a"])
    outer = pickle.loads(blob)  # loading the outer shape needs no user code
    own = jobargs.job_depends(outer)
    assert own == jobargs.JobDepends(b"CODE", ("mod_a",), S.dumps(((1,), {"k": 2})))


@pytest.mark.parametrize("loaded", [
    (jobargs.JOB_DEPENDS, "code", [], b""),
    (jobargs.JOB_DEPENDS, b"", [1], b""),
    (jobargs.JOB_DEPENDS, b"", [], None),
])
def test_a_malformed_record_is_refused(loaded: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        jobargs.job_depends(loaded)


def test_four_plain_values_are_not_a_record() -> None:
    assert jobargs.job_depends(("other", b"", [], b"")) is None
    assert jobargs.job_depends([jobargs.JOB_DEPENDS, b"", [], b""]) is None


# --------------------------------------------------------------------------- the client's packing
def test_pack_job_sorts_code_modules_and_files(tmp_path: Path) -> None:
    box, triple = own_code()
    data = tmp_path / "data.txt"
    data.write_text("x")
    helper = tmp_path / "helper_mod.py"
    helper.write_text("VALUE = 1\n")
    module = types.ModuleType("helper_mod")
    module.__file__ = str(helper)
    blob, paths = pack_job("function", (5,), {}, [box, triple, box(1), module, str(data), sys], S)
    assert paths == [str(helper), str(data)]  # a built-in module needs nothing
    own = jobargs.job_depends(S.loads(blob))
    assert own is not None and own.modules == ("helper_mod",) and S.loads(own.inner) == ((5,), {})
    loaded = S.loads(own.code)
    assert [type(x).__name__ for x in loaded] == ["type", "function", "Box"]


def test_pack_job_with_files_only_keeps_the_plain_shape(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("x")
    blob, paths = pack_job("function", (1,), {}, [data], S)
    assert blob == S.dumps(((1,), {})) and paths == [str(data)]


def test_a_program_takes_files_and_modules_but_no_code(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text("")
    blob, paths = pack_job("program", ("a",), {}, [str(script)], S)
    assert blob == S.dumps((("a",), {})) and paths == [str(script)]  # a program has no namespace to clean
    _, triple = own_code()
    with pytest.raises(ValueError, match="program computation .* not function own_code.<locals>.triple"):
        pack_job("program", ("a",), {}, [triple], S)


@pytest.mark.parametrize("depends, message", [
    ("file.txt", "dispy_job_depends must be a list"),
    ([7], "dispy_job_depends: cannot send dependency 7"),
    (["/nonexistent/dispy-test.txt"], "dispy_job_depends: '/nonexistent/dispy-test.txt' is not a readable file"),
])
def test_bad_depends_say_what_is_wrong(depends: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_job("function", (), {}, depends, S)


def test_the_element_that_cannot_travel_is_named() -> None:
    box, triple = own_code()
    bad = box(i for i in range(2))
    with pytest.raises(SerializationError, match=r"an instance of .*Box cannot be sent: TypeError: .*generator"):
        pack_job("function", (), {}, [triple, bad], S)


def test_describe_names_kind_and_name() -> None:
    box, triple = own_code()
    assert describe(sys) == "module sys"
    assert describe(box) == "class own_code.<locals>.Box"
    assert describe(triple) == "function own_code.<locals>.triple"
    assert describe(box(1)) == "an instance of own_code.<locals>.Box"
    assert describe(42) == "42"
    assert describe("x" * 1000).startswith("'xxx") and len(describe("x" * 1000)) < 60


# --------------------------------------------------------------------------- installing and removing
def own_for(*objects: Any, modules: tuple[str, ...] = ()) -> jobargs.JobDepends:
    return jobargs.JobDepends(S.dumps_code(list(objects)) if objects else b"", modules, S.dumps(((), {})))


def test_install_then_remove_leaves_the_namespace_as_it_was(tmp_path: Path) -> None:
    box, triple = own_code()
    shared_triple = object()
    ns: dict[str, Any] = {"__name__": "__main__", "triple": shared_triple, "kept": 1}
    before = dict(ns)
    installed = jobdepends.install(own_for(box, triple), S, ns, str(tmp_path))
    assert ns["Box"].__name__ == "Box" and ns["triple"](2) == 6 and ns["kept"] == 1
    assert ns["triple"].__globals__ is ns  # re-bound like a computation's helpers
    installed.remove()
    assert ns == before and ns["triple"] is shared_triple


def test_what_the_job_set_itself_stays(tmp_path: Path) -> None:
    box, triple = own_code()
    ns: dict[str, Any] = {}
    installed = jobdepends.install(own_for(box, triple), S, ns, str(tmp_path))
    ns["Box"] = "set by the job"
    ns["new"] = "also the job's"
    installed.remove()
    assert ns == {"Box": "set by the job", "new": "also the job's"}


def test_a_failed_install_leaves_nothing(tmp_path: Path) -> None:
    _, triple = own_code()
    code = S.dumps_code([triple])
    broken = jobargs.JobDepends(code[: len(code) // 2], (), b"")
    ns: dict[str, Any] = {"a": 1}
    with pytest.raises(Exception):  # noqa: B017 - whatever the serializer raises for a cut payload
        jobdepends.install(broken, S, ns, str(tmp_path))
    assert ns == {"a": 1}


def test_only_the_jobs_own_modules_are_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    inside, outside = types.ModuleType("jd_inside"), types.ModuleType("jd_outside")
    inside.__file__ = str(work / "jd_inside.py")
    outside.__file__ = str(tmp_path / "jd_outside.py")
    monkeypatch.setitem(sys.modules, "jd_inside", inside)
    monkeypatch.setitem(sys.modules, "jd_outside", outside)
    installed = jobdepends.install(own_for(modules=("jd_inside", "jd_outside")), S, {}, str(work))
    assert "jd_inside" not in sys.modules  # an earlier job's module of that name is not this job's
    sys.modules["jd_inside"] = inside  # the job imports it
    installed.remove()
    assert "jd_inside" not in sys.modules and sys.modules["jd_outside"] is outside


# --------------------------------------------------------------------------- the job runtime
PROBE = """
def probe_names(x):
    g = globals()
    return x, sorted(name for name in ("Box", "triple") if name in g)
"""


def computation_namespace() -> tuple[dict[str, Any], Any]:
    """A computation's namespace and its function, as a host builds them from source."""
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    exec(PROBE, ns)  # noqa: S102 - the test's own code
    return ns, ns["probe_names"]


@pytest.fixture
def channel(tmp_path: Path) -> Any:
    r, w = os.pipe()
    yield runtime.JobChannel(w, S, str(tmp_path), 0)
    os.close(r)
    os.close(w)


def test_the_job_sees_its_own_code_and_the_namespace_is_clean_after(channel: Any) -> None:
    box, triple = own_code()
    ns, probe_names = computation_namespace()
    before = dict(ns)
    blob = jobargs.pack(S, (4,), {}, S.dumps_code([box, triple]))
    header, blobs = runtime._run_function(probe_names, blob, channel, ns)
    assert header["ok"], header["exc"]
    assert S.loads(blobs[0]) == (4, ["Box", "triple"])
    assert ns == before
    header, blobs = runtime._run_function(probe_names, S.dumps(((5,), {})), channel, ns)
    assert S.loads(blobs[0]) == (5, [])


def test_a_job_whose_code_cannot_be_installed_fails_with_the_reason(channel: Any) -> None:
    ns, probe_names = computation_namespace()
    blob = S.dumps((jobargs.JOB_DEPENDS, b"not a pickle", [], S.dumps(((1,), {}))))
    header, _ = runtime._run_function(probe_names, blob, channel, ns)
    assert not header["ok"] and "cannot install the job's dispy_job_depends" in header["exc"]


# --------------------------------------------------------------------------- the node's files
def test_a_jobs_module_leaves_with_its_bytecode(tmp_path: Path) -> None:
    files = ComputationFiles(tmp_path)
    data = b"VALUE = 1\n"
    assert files.write(m.FileChunk(1, "c", "jd_mod.py", len(data), 0, data, job_uid=7))
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    tag = sys.implementation.cache_tag
    (cache / f"jd_mod.{tag}.pyc").write_bytes(b"")
    (cache / f"jd_mod.{tag}.opt-1.pyc").write_bytes(b"")
    (cache / f"other.{tag}.pyc").write_bytes(b"")  # the computation's own module
    files.job_done(7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__pycache__"]
    assert sorted(p.name for p in cache.iterdir()) == [f"other.{tag}.pyc"]
    (cache / f"other.{tag}.pyc").unlink()
    assert files.write(m.FileChunk(1, "c", "jd_mod.py", len(data), 0, data, job_uid=8))
    files.job_done(8)
    assert list(tmp_path.iterdir()) == []  # an empty cache directory goes too
