"""The README's main job: `dispy demo` starts its own node and computes a known answer."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_demo_counts_primes(executor: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dispy_core.cli", "demo", "--jobs", "4", "--executor", executor],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[  4/4]" in proc.stdout
    assert "14683 primes below 160,000" in proc.stdout  # pi(160000) = 14683 (checked with a sieve)
