"""recover_file and dispy.recover_jobs with real dispynode processes and a client program that really dies
(SIGKILL): every result comes back exactly once, the nodes are released, the file goes away."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dispy
from dispy_core.errors import DispyError
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for

PROGRAM = Path(__file__).parent / "programs" / "crashing_client.py"
SECRET = "recover-test-secret"


def crash_client(tmp_path: Path, nodes: list[NodeProcess], jobs: int, kill_after: int,
                 nap: float = 0.0) -> tuple[Path, dict[int, int]]:
    """Run the crashing program; the recover file and the results it wrote before it died."""
    recover_file, out = tmp_path / "_dispy_test", tmp_path / "written.txt"
    proc = subprocess.run([sys.executable, str(PROGRAM), ",".join(str(n.port) for n in nodes), str(recover_file),
                           str(out), str(jobs), str(kill_after), SECRET, str(nap)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == -9, f"the program did not die as planned ({proc.returncode}):\n{proc.stderr}"
    written = {}
    for line in out.read_text().splitlines():
        uid, result = line.split()
        written[int(uid)] = int(result)
    return recover_file, written


def test_a_crashed_client_gets_every_result_back_once(node_factory: Callable[..., NodeProcess],
                                                      tmp_path: Path) -> None:
    nodes = [node_factory("--cpus", "1", secret=SECRET) for _ in range(2)]
    recover_file, written = crash_client(tmp_path, nodes, jobs=40, kill_after=12)
    assert len(written) == 11
    assert SECRET not in recover_file.read_text()  # only the key derived from it
    assert stat.S_IMODE(recover_file.stat().st_mode) == 0o600

    jobs = dispy.recover_jobs(str(recover_file), timeout=60)

    recovered = {job.id: job for job in jobs}
    assert not set(recovered) & set(written), "a result the program had came back again"
    finished = {uid: job.result for uid, job in recovered.items() if job.status == dispy.DispyJob.Finished}
    assert len(finished) >= 1  # at least the one the program died holding
    assert all(result == (uid - 1) ** 2 for uid, result in finished.items())  # uids count from 1, n from 0
    others = [job for job in jobs if job.status != dispy.DispyJob.Finished]
    # jobs still in the client, or refused by a node (no free CPU), when it died never ran: told so, not lost
    assert all(job.status == dispy.DispyJob.Abandoned and ("no record" in str(job.exception) or
                                                           "before sending the job" in str(job.exception))
               for job in others), [(job.id, job.status, job.exception) for job in others]
    assert set(recovered) | set(written) == set(range(1, 41))  # every job, one way or the other
    for node in nodes:  # released: the computation closed on each node that had jobs
        node.wait_log("closed after", timeout=20)
    assert not recover_file.exists()  # nothing left to recover


def test_terminate_pending_ends_long_jobs_and_frees_the_nodes(node_factory: Callable[..., NodeProcess],
                                                             tmp_path: Path) -> None:
    node = node_factory("--cpus", "1", secret=SECRET)
    recover_file, written = crash_client(tmp_path, [node], jobs=3, kill_after=0, nap=60)
    assert written == {}
    started = time.monotonic()
    jobs = dispy.recover_jobs(str(recover_file), timeout=1, terminate_pending=True)
    assert time.monotonic() - started < 20
    running = [job for job in jobs if job.status == dispy.DispyJob.Terminated]
    assert len(running) >= 1 and all("terminate_pending" in str(job.exception) for job in running)
    node.wait_log("closed after", timeout=20)
    assert not recover_file.exists()
    # the node is free for the next client at once
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)], secret=SECRET,
                          recover_file=str(tmp_path / "next")) as cluster:
        job = cluster.submit(-4)
        assert job is not None and job(timeout=30) == 4


def test_a_recovery_cut_short_leaves_the_jobs_to_a_later_one(node_factory: Callable[..., NodeProcess],
                                                             tmp_path: Path) -> None:
    node = node_factory("--cpus", "1", secret=SECRET)
    recover_file, _ = crash_client(tmp_path, [node], jobs=2, kill_after=0, nap=3)
    first = dispy.recover_jobs(str(recover_file), timeout=0.2)
    still = [job.id for job in first if job.status == dispy.DispyJob.Running]
    assert still, [(job.id, job.status) for job in first]
    assert recover_file.exists()  # what is still running stays recoverable
    later = dispy.recover_jobs(str(recover_file), timeout=60)
    done = {job.id: job.result for job in later if job.status == dispy.DispyJob.Finished}
    assert set(still) <= set(done) and all(done[uid] == (uid - 1) ** 2 for uid in still)
    assert not set(done) & {job.id for job in first if job.status == dispy.DispyJob.Finished}  # never twice
    assert not recover_file.exists()


def test_a_computation_not_recovered_in_time_is_closed(node_factory: Callable[..., NodeProcess],
                                                       tmp_path: Path) -> None:
    node = node_factory("--cpus", "1", "--zombie_interval", "0.02", secret=SECRET)  # 1.2 s
    recover_file, _ = crash_client(tmp_path, [node], jobs=2, kill_after=0, nap=0.5)
    node.wait_log("not recovered within", timeout=30)
    jobs = dispy.recover_jobs(str(recover_file), timeout=10)
    assert jobs and all(job.status == dispy.DispyJob.Abandoned for job in jobs)
    assert all("no such computation" in str(job.exception) for job in jobs), [job.exception for job in jobs]


def test_without_a_file_name_the_latest_is_used_and_bad_files_are_named(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DispyError, match="no recover file"):
        dispy.recover_jobs()
    (tmp_path / "_dispy_20200101000000").write_text("not json\n")
    with pytest.raises(DispyError, match="not a dispy recover file"):
        dispy.recover_jobs()


def test_a_clean_close_removes_the_recover_file(node: NodeProcess, tmp_path: Path) -> None:
    path = tmp_path / "rec"
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)],
                          recover_file=str(path)) as cluster:
        assert cluster.recover_file == str(path)
        jobs = [cluster.submit(-n) for n in range(5)]
        assert [job(timeout=30) for job in jobs if job is not None] == list(range(5))
        assert path.exists()
        lines = path.read_text().splitlines()
        assert sum(1 for line in lines if line.startswith("D ")) == 5
    assert not path.exists()


def test_a_client_that_comes_back_replaces_its_lost_instance(node_factory: Callable[..., NodeProcess],
                                                            tmp_path: Path) -> None:
    """The connection drops while a job runs (a partition the client notices first): the client connects
    again, the node drops the old instance of the computation, and each job finishes exactly once."""
    node = node_factory("--cpus", "1")
    finals: dict[int, int] = {}

    def job_status(job: dispy.DispyJob) -> None:
        if job.status == dispy.DispyJob.Finished:
            finals[job.id] = finals.get(job.id, 0) + 1

    with dispy.JobCluster(pow, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)], reentrant=True,
                          job_status=job_status, recover_file=str(tmp_path / "rec")) as cluster:
        wait_for(lambda: cluster.status()["nodes"], timeout=30)
        [conn] = cluster._life.nodes.values()
        assert conn.channel is not None
        cluster._loop.run(conn.channel.close("cut off for the test"))
        node.wait_log("opened again", timeout=30)
        jobs = [cluster.submit(2, n) for n in range(10)]
        assert cluster.wait(timeout=60)
        assert [job.result for job in jobs if job is not None] == [2 ** n for n in range(10)]
    wait_for(lambda: len(finals) == 10, timeout=10)
    assert set(finals.values()) == {1}
    assert len(node.log().split("closed after")) == 3  # the old instance and the new one, nothing left open


def test_results_kept_on_disk_outlive_a_node_restart(node_factory: Callable[..., NodeProcess],
                                                     tmp_path: Path) -> None:
    """Starting a node never deletes results a crashed client could still recover (system.md)."""
    node = node_factory("--cpus", "1", secret=SECRET)
    recover_file, _ = crash_client(tmp_path, [node], jobs=2, kill_after=0, nap=0.5)
    node.wait_log("went away", timeout=20)
    time.sleep(2.0)  # the jobs at the node end meanwhile; their results go to disk
    assert node.stop() == 0
    again = node_factory("--cpus", "1", secret=SECRET, prefix=node.prefix, base_port=node.base_port)
    assert "from before this node started" in again.log()
    jobs = dispy.recover_jobs(str(recover_file), timeout=10)
    done = [job for job in jobs if job.status == dispy.DispyJob.Finished]
    assert done and all(job.result == (job.id - 1) ** 2 for job in done)
    assert all(job.status == dispy.DispyJob.Abandoned for job in jobs if job not in done)
    again.wait_log("taken by recover_jobs", timeout=10)
    assert not list((node.prefix / ".dispy-kept-results").glob("*/*.result"))  # released: gone
