"""Smoke run of bench/bench_jobs.py --quick: it runs end to end and prints its table (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_jobs.py"
ROW_LABELS = ("tiny jobs throughput (jobs/s)", "latency median (ms)", "latency p99 (ms)", "1 MiB args (MiB/s)",
              "client CPU per job (ms)", "node process CPU per job (ms)")


@pytest.mark.timeout(150)
def test_bench_quick_runs(tmp_path: Path) -> None:
    out_json = tmp_path / "last.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out_json)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "machine:" in proc.stdout
    for label in ROW_LABELS:
        assert label in proc.stdout, f"row {label!r} missing from:\n{proc.stdout}"
    assert "ProcessPool(2)" in proc.stdout and "dispy[" in proc.stdout
    assert "targets dispy[" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["baseline"]["throughput_jobs_s"] is not None
    assert all(r["throughput_jobs_s"] is not None and not r["errors"] for r in report["dispy"])


@pytest.mark.timeout(150)
def test_bench_scheduler_quick_runs(tmp_path: Path) -> None:
    """bench/bench_scheduler.py --quick: the same jobs direct and through dispyscheduler, both measured."""
    out_json = tmp_path / "sched.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_scheduler.py"), "--quick", "--json",
                           str(out_json)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "the scheduler's cost per job:" in proc.stdout
    rows = json.loads(out_json.read_text())
    assert [row["name"] for row in rows] == ["direct (JobCluster)", "through dispyscheduler"]
    assert all(row["jobs"] == 100 and row["jobs_per_s"] > 0 for row in rows)
