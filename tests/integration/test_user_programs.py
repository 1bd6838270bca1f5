"""Client programs run as real scripts (their functions live in __main__), and nodes on other Pythons."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

PROGRAMS = Path(__file__).parent / "programs"


def test_depends_of_every_kind_from_main(node: NodeProcess, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("payload\n")
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "mod_dep.py").write_text("VALUE = 7\n")
    proc = subprocess.run([sys.executable, str(PROGRAMS / "depends_main.py"), str(node.base_port), str(data),
                           str(module_dir)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # norm2(1,2)=5, helper(0)=1000, scale.norm2()=13, mod_dep.VALUE=7
    assert "RESULT (1025, 'payload', 'Point') 11 None" in proc.stdout, proc.stdout + proc.stderr


def _other_pythons() -> list[str]:
    return [p for p in os.environ.get("DISPY_TEST_OTHER_PYTHONS", "").split(",") if p]


def scaled_sum(values: list[int], factor: int = 2) -> tuple[int, str]:
    import sys

    return sum(v * factor for v in values), "{}.{}".format(*sys.version_info[:2])


@pytest.mark.skipif(not _other_pythons(),
                    reason="no other Python prepared (run ./run_tests.sh, which sets DISPY_TEST_OTHER_PYTHONS)")
@pytest.mark.parametrize("python", _other_pythons() or ["none"])
def test_client_and_node_on_different_pythons(node_factory: Callable[..., NodeProcess], python: str) -> None:
    node = node_factory(python=python)
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version != "{}.{}".format(*sys.version_info[:2])
    with dispy.JobCluster(scaled_sum, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit([1, 2, 3], factor=10)
        assert job is not None
        assert job(timeout=60) == (60, version), job.exception
    lam = lambda x: x + 1  # noqa: E731 - no source: only by value, which needs the same Python
    cluster = dispy.JobCluster(lam, nodes=["127.0.0.1"], dispy_port=node.base_port)
    try:
        job = cluster.submit(1)
        assert job is not None
        assert job.wait(timeout=30)  # the node refused the computation for good: no node can run the job
        assert job.status == dispy.DispyJob.Abandoned and "without source code" in str(job.exception)
        assert cluster.status()["nodes"] == []
    finally:
        cluster.close(timeout=0, terminate=True)
    assert f"runs Python {version}" in node.log() and "without source code" in node.log()
