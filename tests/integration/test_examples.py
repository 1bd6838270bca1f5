"""Every program in examples/ runs to the end and exits 0 (each starts its own nodes on 127.0.0.1 and checks
its own results with asserts), and every one is described in the user guide."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(path for path in (ROOT / "examples").glob("*.py") if not path.name.startswith("_"))


def test_there_are_examples_and_each_is_in_the_guide() -> None:
    guide = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    assert len(EXAMPLES) >= 6, EXAMPLES
    missing = [path.name for path in EXAMPLES if f"examples/{path.name}" not in guide]
    assert not missing, f"docs/examples.md does not describe {missing}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPY_NODES", "DISPY_SECRET", "DISPY_CONFIG")}  # the example's own local nodes
    env["DISPY_HOST"] = "127.0.0.1"
    started = time.monotonic()
    # A session of its own, so that on a timeout the example and the nodes it started are stopped together.
    proc = subprocess.Popen([sys.executable, str(example)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{example.name} did not finish within 90 s:\n{output.decode(errors='replace')}")
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"{example.name} exited with {proc.returncode} after " \
                                 f"{time.monotonic() - started:.1f} s:\n{text}"
    assert "Traceback" not in text, text
    assert not list(tmp_path.glob("_dispy_*")), "the example left a recover file: a cluster was not closed"
