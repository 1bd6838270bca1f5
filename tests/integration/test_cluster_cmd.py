"""``dispy_cmd`` end to end: the installed command against a real dispynode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dispy_core.testing.nodes import NodeProcess

PROGRAM = """import sys
with open("table.txt") as handle:
    table = handle.read().strip()
print("args", *sys.argv[1:], "table", table)
print("complaint", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def run_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("dispy_cmd")
    argv = [str(command)] if command.exists() else [sys.executable, "-m", "dispy_core.cmd"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=90)


def test_dispy_cmd_runs_one_job_per_argument_string(node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node: NodeProcess = node_factory(secret="cmd-secret")
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM)
    (tmp_path / "table.txt").write_text("T42\n")
    common = ["-n", "127.0.0.1", "--dispy_port", str(node.base_port), "--secret", "cmd-secret",
              "--depends", "table.txt"]
    done = run_cmd(str(program), "-a", "0 'two words'", "-a", "0 x", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "=== job 1 (0 'two words') on 127.0.0.1: finished, exit status 0" in out
    assert "args 0 two words table T42" in out and "args 0 x table T42" in out
    assert "--- stderr:\ncomplaint" in out
    assert out.index("job 1") < out.index("job 2")
    failed = run_cmd(str(program), "-a", "0", "-a", "3", *common, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr + node.log()
    assert "=== job 2 (3) on 127.0.0.1: finished, exit status 3" in failed.stdout


def test_dispy_cmd_says_why_no_node_is_usable(node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    node: NodeProcess = node_factory(secret="right")
    program = tmp_path / "prog.py"
    program.write_text("print('never')\n")
    done = run_cmd(str(program), "-n", "127.0.0.1", "-p", str(node.base_port), "-s", "wrong", cwd=tmp_path)
    assert done.returncode == 3
    assert "no usable node" in done.stderr and "authentication" in done.stderr
    assert "never" not in done.stdout
    bad = run_cmd(str(program), "--depends", "missing.txt", "-n", "127.0.0.1", cwd=tmp_path)
    assert bad.returncode == 2 and "missing.txt" in bad.stderr
