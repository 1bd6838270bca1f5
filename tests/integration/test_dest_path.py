"""dest_path: a directory shared by computations in turn, never at once; closing removes only what the
closing computation created (measured before: closing one deleted another's files)."""

from __future__ import annotations

from pathlib import Path

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for


def write_file(name: str) -> str:
    with open(name, "w") as handle:
        handle.write(name)
    return name


def test_a_live_computations_dest_path_is_refused_to_another(node: NodeProcess, tmp_path: Path) -> None:
    where = [dispy.NodeAllocate("127.0.0.1", port=node.port)]
    first = dispy.JobCluster(write_file, nodes=where, dest_path="shared", recover_file=str(tmp_path / "r1"))
    try:
        job = first.submit("first.txt")
        assert job is not None and job(timeout=30) == "first.txt"
        second = dispy.JobCluster(write_file, nodes=where, dest_path="shared", recover_file=str(tmp_path / "r2"))
        try:
            [reason] = wait_for(lambda: list(second.status()["failed_nodes"].values()), timeout=20)
            assert "dest_path 'shared' is in use by computation write_file" in reason, reason
        finally:
            second.close(timeout=0, terminate=True)
        for bad, why in ((".", "escapes its directory"), (".dispy-kept-results/x", "the node's own directory")):
            other = dispy.JobCluster(write_file, nodes=where, dest_path=bad, recover_file=str(tmp_path / "r3"))
            try:
                [reason] = wait_for(lambda: list(other.status()["failed_nodes"].values()), timeout=20)  # noqa: B023
                assert why in reason, reason
            finally:
                other.close(timeout=0, terminate=True)
    finally:
        first.close()
    assert not (node.prefix / "shared").exists()  # made by the first computation: removed with it (cleanup)


def test_closing_removes_only_what_this_computation_created(node: NodeProcess, tmp_path: Path) -> None:
    where = [dispy.NodeAllocate("127.0.0.1", port=node.port)]
    shared = node.prefix / "cache"
    shared.mkdir()
    (shared / "earlier.dat").write_text("an earlier run's cached file (cleanup=False)")
    depend = tmp_path / "mine.txt"
    depend.write_text("mine")
    with dispy.JobCluster(write_file, nodes=where, dest_path="cache", depends=[str(depend)],
                          recover_file=str(tmp_path / "r")) as cluster:
        job = cluster.submit("made-by-job.txt")
        assert job is not None and job(timeout=30) == "made-by-job.txt"
        assert (shared / "mine.txt").exists() and (shared / "made-by-job.txt").exists()
    wait_for(lambda: not (shared / "made-by-job.txt").exists(), timeout=20)
    assert not (shared / "mine.txt").exists()
    assert (shared / "earlier.dat").read_text().startswith("an earlier run")  # another's: kept
