"""A failing job's traceback names the computation's own file and line, with the source lines, on a real node."""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.util
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import dispy
from dispy_core.computation import Computation
from dispy_core.testing.nodes import NodeProcess
from dispy_plugins.executor_host import namespace, runtime

PROGRAM = textwrap.dedent('''\
    import json
    import sys

    import dispy


    def compute(n):
        total = n * 2
        raise ValueError(f"bad total {total}")


    if __name__ == "__main__":
        cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=int(sys.argv[1]))
        job = cluster.submit(21)
        result = job()
        cluster.close()
        print(json.dumps({"result": result, "exception": job.exception}))
    ''')

MODULE = textwrap.dedent('''\
    """A module with no file: its computation travels by value (annotated, so its source is not enough)."""


    def compute(n: int) -> int:
        value = n * 3
        return {}[value]
    ''')


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the (only) line of ``text`` that contains ``needle``."""
    (number,) = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return number


def test_a_failing_job_of_a_program_shows_its_file_line_and_source(node: NodeProcess, tmp_path: Path) -> None:
    program = tmp_path / "failing_program.py"
    program.write_text(PROGRAM)
    proc = subprocess.run([sys.executable, str(program), str(node.base_port)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    trace = outcome["exception"]
    assert outcome["result"] is None  # as the original: the result of a failed job is None
    line = line_of(PROGRAM, 'raise ValueError(f"bad total {total}")')
    assert f'File "{program}", line {line}, in compute\n' in trace, trace
    assert '    raise ValueError(f"bad total {total}")\n' in trace, trace
    assert trace.endswith("ValueError: bad total 42\n"), trace
    assert "<computation" not in trace


class _MemoryLoader(importlib.abc.SourceLoader):
    """Loads a module from text held in memory under a file name (the client still has the source
    when the file itself is gone)."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self.text.encode()


def _module_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    path = str(tmp_path / "gone" / "vanished_module.py")  # no such file, on the client or on the node
    spec = importlib.util.spec_from_file_location("vanished_module", path, loader=_MemoryLoader(path, MODULE))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vanished_module", module)  # where inspect finds its loader
    spec.loader.exec_module(module)
    return module


def test_source_lines_show_though_the_file_is_not_on_the_node(node: NodeProcess, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module_without_file(tmp_path, monkeypatch)
    path = module.__file__
    assert path is not None and not Path(path).exists()
    with dispy.JobCluster(module.compute, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit(5)
        assert job is not None
        assert job(timeout=60) is None
    trace = job.exception
    assert isinstance(trace, str)
    line = line_of(MODULE, "return {}[value]")
    assert f'File "{path}", line {line}, in compute\n    return {{}}[value]\n' in trace, trace
    assert trace.endswith("KeyError: 15\n"), trace


def test_source_compiled_on_the_node_keeps_the_clients_file_and_lines(tmp_path: Path) -> None:
    """The path nodes of another Python take (from source, not by value): the same file and lines."""
    path = str(tmp_path / "elsewhere" / "client_program.py")
    source = "def compute(n):\n    half = n / 2\n    return half / 0\n"
    comp = Computation(comp_id="c1", name="compute", kind="function", source=source, code_name="compute",
                       py_version=list(sys.version_info[:2]),
                       options={"source_complete": True, "source_file": path, "source_line": 40})
    fn = namespace.load_computation(comp, None, {"__builtins__": builtins, "__name__": "__main__"})
    try:
        fn(4)
    except ZeroDivisionError as exc:
        trace = runtime.format_exception(exc, 0)
    assert f'File "{path}", line 42, in compute\n    return half / 0\n' in trace, trace
