"""Programs written only from client-api.txt run unchanged against real nodes (as __main__ scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dispy_core.testing.nodes import NodeProcess

PROGRAMS = Path(__file__).parent / "programs"


def run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(PROGRAMS / script), *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_provisional_results_example(node: NodeProcess, tmp_path: Path) -> None:
    out = run("spec_provisional.py", str(node.base_port), cwd=tmp_path)
    line = next(text for text in out.splitlines() if text.startswith("PROVISIONAL"))
    count = int(line.split()[1])
    assert count >= 4 and "OK True" in line  # each job reports at least its first candidate
    assert "Sec/Job" in out


def test_in_memory_setup_example(node: NodeProcess, tmp_path: Path) -> None:
    data = tmp_path / "numbers.txt"
    data.write_text("\n".join(str(i) for i in range(1, 101)) + "\n")
    out = run("spec_setup_cleanup.py", str(node.base_port), str(data), cwd=tmp_path)
    assert "RESULTS [(0, True), (5050, True), (10100, True), (15150, True), (20200, True)]" in out
