"""A job's processes, output and limits, through real dispynode processes.

- What a job starts (a child, a ``sh -c 'cmd &'`` orphan, a double-forked daemon in a session of its
  own) is gone when the job's result arrives, whether the job returned, raised or crashed, with a
  process per job or reused ones; nothing is left after the node's SIGTERM or its host's SIGKILL, with
  a cgroup per computation and without (``executor.cgroup = false``).
- What a job writes to fds 1 and 2 (``os.write``, C code, programs it starts) is its ``stdout`` /
  ``stderr``, never the node's log, capped like ``print`` output; a program computation that leaves a
  process holding its stdout ends anyway.
- ``job_limits`` under the node's ceilings: memory, CPU time and open files, each exceeded with a
  clear reason.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_plugins.executor_host.capture import OUTPUT_CAP, TRUNCATED
from dispy_plugins.executor_host.cgroups import CgroupRoot

Factory = Callable[..., NodeProcess]
CGROUP = CgroupRoot.find()[0] is not None


def spawn_children(pid_dir: str, mode: str = "return") -> list[int]:
    """Start three kinds of processes that outlive their parent unless someone ends them; record their
    pids in ``pid_dir`` (for a job that never returns), then return, raise, crash or wait."""
    import subprocess

    child = subprocess.Popen(["sleep", "1000"])
    shell = subprocess.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    orphan = int(shell.stdout)
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # a daemon: double fork, a session of its own, no exec (so no environment marker)
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(1000)
        os._exit(0)
    os.waitpid(middle, 0)
    daemon = int(os.read(r, 64))
    pids = [child.pid, orphan, daemon]
    with open(os.path.join(pid_dir, f"{os.getpid()}-{time.monotonic_ns()}.pids"), "w") as fh:
        fh.write(" ".join(map(str, pids)))
    if mode == "raise":
        raise RuntimeError("failed after starting processes")
    if mode == "crash":
        os._exit(3)
    if mode == "wait":
        time.sleep(1000)
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def recorded(pid_dir: Path, count: int = 1, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(files := sorted(pid_dir.glob("*.pids"))) < count or any(not f.read_text() for f in files):
        assert time.monotonic() < deadline, "the jobs did not record their processes"
        time.sleep(0.05)
    return [int(word) for f in files for word in f.read_text().split()]


def gone_within(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # the test's own cleanup: never leave them running
        with_suppressed_kill(pid)
    return left


def with_suppressed_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def cluster_for(node: NodeProcess, computation: Any, **kwargs: Any) -> Any:
    return dispy.JobCluster(computation, nodes=[node.host], dispy_port=node.base_port, **kwargs)


def site_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return {"DISPY_CONFIG": str(path)}


# --------------------------------------------------------------------------- defect A: processes
@pytest.mark.parametrize(("executor", "per_process"), [("fork", 1), ("fork", 3), ("spawn", 1)])
def test_what_a_job_starts_is_gone_when_its_result_arrives(node_factory: Factory, tmp_path: Path,
                                                         executor: str, per_process: int) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, spawn_children, jobs_per_process=per_process) as cluster:
        jobs = [cluster.submit(str(tmp_path), mode) for mode in ("return", "raise", "return")]
        assert cluster.wait(timeout=60)
        assert [job.status for job in jobs] == [dispy.DispyJob.Finished, dispy.DispyJob.Terminated,
                                                dispy.DispyJob.Finished], [job.exception for job in jobs]
        pids = recorded(tmp_path, 3)
        assert len(pids) == 9
        assert [p for p in pids if alive(p)] == []  # at once: ended before the results left the node
        again = cluster.submit(str(tmp_path))
        assert again is not None and again(timeout=30) is not None  # the node (and a reused process) goes on


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_what_a_crashed_job_started_is_ended(node_factory: Factory, tmp_path: Path, executor: str) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, spawn_children) as cluster:
        job = cluster.submit(str(tmp_path), "crash")
        assert job is not None and job(timeout=30) is None
        assert job.status == dispy.DispyJob.Terminated and "exited with status 3" in job.exception
        assert gone_within(recorded(tmp_path), 3.0) == []


def test_what_setup_started_outlives_crashed_jobs(node_factory: Factory, tmp_path: Path) -> None:
    """The host kills a dead job's leftovers, never the processes setup started (its own). Without the
    zygote, the host forks every job process, so their leftovers are re-parented to the host."""
    config = "[executor]\ncgroup = false\n[executor.fork]\nzygote = false\n"
    node = node_factory("--executor", "fork", env=site_config(tmp_path, config))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    where = str(pid_dir)

    def start_server() -> int:  # a daemon for the computation's jobs, re-parented to the host
        import subprocess

        shell = subprocess.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
        with open(os.path.join(where, "server"), "w") as fh:
            fh.write(shell.stdout)
        return 0

    server = 0
    try:
        with cluster_for(node, spawn_children, setup=start_server) as cluster:
            jobs = [cluster.submit(str(pid_dir), "crash") for _ in range(2)]
            assert cluster.wait(timeout=30) and all(job.status == dispy.DispyJob.Terminated for job in jobs)
            server = int((pid_dir / "server").read_text())  # setup ran before the jobs
            assert gone_within(recorded(pid_dir, 2), 3.0) == []
            assert alive(server)
    finally:
        gone_within([server] if server else [], 0)


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "no-cgroup"])
def test_node_sigterm_leaves_nothing_behind(node_factory: Factory, tmp_path: Path, cgroup: bool) -> None:
    if cgroup and not CGROUP:
        pytest.skip("no writable cgroup v2 hierarchy here")
    node = node_factory(env=site_config(tmp_path, f"[executor]\ncgroup = {str(cgroup).lower()}\n"))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    cluster = cluster_for(node, spawn_children)
    try:
        finished = cluster.submit(str(pid_dir))
        assert finished is not None and finished(timeout=30) is not None
        running = cluster.submit(str(pid_dir), "wait")
        assert running is not None
        pids = recorded(pid_dir, 2)
        below_node = [p.pid for p in psutil.Process(node.proc.pid).children(recursive=True)]
        assert node.stop() == 0
        assert gone_within(pids + below_node, 5.0) == []
    finally:
        cluster.close(terminate=True)


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "no-cgroup"])
def test_a_killed_host_leaves_nothing_behind(node_factory: Factory, tmp_path: Path, cgroup: bool) -> None:
    """The host and its zygote die together (the chain of subreapers is gone): the cgroup ends everything;
    without one, the node finds what the jobs executed by their environment marker."""
    if cgroup and not CGROUP:
        pytest.skip("no writable cgroup v2 hierarchy here")
    node = node_factory(env=site_config(tmp_path, f"[executor]\ncgroup = {str(cgroup).lower()}\n"))
    with cluster_for(node, spawn_children) as cluster:
        job = cluster.submit(str(tmp_path), "wait")
        assert job is not None
        child, orphan, daemon = recorded(tmp_path)
        hosts = [p for p in psutil.Process(node.proc.pid).children() if "executor_host.host" in " ".join(p.cmdline())]
        assert len(hosts) == 1
        os.killpg(hosts[0].pid, signal.SIGKILL)  # the host and its zygote
        assert job(timeout=30) is None and job.status in (dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned)
        # a daemon that never executed a program carries no marker: only the cgroup finds it
        expected = [child, orphan, daemon] if cgroup else [child, orphan]
        assert gone_within(expected, 5.0) == []
        gone_within([daemon], 0)


# --------------------------------------------------------------------------- defect B: output
def write_everywhere(tag: str) -> str:
    import ctypes
    import subprocess
    import sys

    print(f"print {tag}", flush=True)
    os.write(1, f"fd1 {tag}\n".encode())
    os.write(2, f"fd2 {tag}\n".encode())
    libc = ctypes.CDLL(None)
    libc.puts(f"libc {tag}".encode())
    libc.fflush(None)
    subprocess.run(["sh", "-c", f"echo child {tag}; echo child-err {tag} >&2"], check=True)
    print(f"print-err {tag}", file=sys.stderr)
    return tag


@pytest.mark.parametrize(("executor", "per_process"), [("fork", 1), ("fork", 3), ("spawn", 2)])
def test_fd_1_and_2_are_the_jobs_output(node_factory: Factory, executor: str, per_process: int) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, write_everywhere, jobs_per_process=per_process) as cluster:
        jobs = [cluster.submit(f"job{i}") for i in range(3)]
        assert cluster.wait(timeout=60)
        for i, job in enumerate(jobs):
            tag = f"job{i}"
            assert job.status == dispy.DispyJob.Finished, job.exception
            assert job.stdout == f"print {tag}\nfd1 {tag}\nlibc {tag}\nchild {tag}\n"  # in order, its own only
            assert job.stderr == f"fd2 {tag}\nchild-err {tag}\nprint-err {tag}\n"
    log = node.log()
    assert "fd1 job" not in log and "child job" not in log and "libc job" not in log


def flood(megabytes: int) -> int:
    chunk = b"x" * (1 << 20)
    for _ in range(megabytes):
        os.write(1, chunk)
    print("the end")
    return megabytes


def test_fd_output_is_capped_like_print(node: NodeProcess) -> None:
    with cluster_for(node, flood) as cluster:
        job = cluster.submit(24)
        assert job is not None and job(timeout=60) == 24
        assert len(job.stdout) == OUTPUT_CAP + len(TRUNCATED) and job.stdout.endswith(TRUNCATED.decode())
    assert len(node.log()) < 100_000  # none of it went to the node's log


def test_a_program_that_leaves_a_process_on_its_stdout_ends(node: NodeProcess, tmp_path: Path) -> None:
    """A program computation writes into the job's pipes directly; a process it leaves behind holding
    them neither keeps the job waiting nor outlives it."""
    program = tmp_path / "prog.sh"
    program.write_text("#!/bin/sh\necho out; echo err >&2\nsleep 1000 &\necho $! > \"$1/bg.pids\"\n")
    program.chmod(0o755)
    with cluster_for(node, str(program)) as cluster:
        job = cluster.submit(str(tmp_path))
        assert job is not None and job(timeout=20) == 0, (job.status, job.exception)
        assert (job.stdout, job.stderr) == (b"out\n", b"err\n")
        assert gone_within(recorded(tmp_path), 0) == []


# --------------------------------------------------------------------------- job limits
def use(what: str) -> Any:
    import resource

    if what == "memory":
        return len(bytearray(512 << 20))
    if what == "files":
        return len([open(os.devnull) for _ in range(200)])
    if what == "cpu":
        while True:
            pass
    return (resource.getrlimit(resource.RLIMIT_DATA)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            resource.getrlimit(resource.RLIMIT_CPU)[0] - int(time.process_time()))


@pytest.mark.parametrize(("executor", "per_process"), [("fork", 1), ("spawn", 2)])
def test_job_limits_under_the_nodes_ceilings(node_factory: Factory, tmp_path: Path, executor: str,
                                             per_process: int) -> None:
    node = node_factory("--executor", executor, env=site_config(tmp_path, "[executor]\nmax_cpu_time = 1\n"))
    limits = {"memory": "256m", "open_files": 64, "cpu_time": 60}  # the node bounds cpu_time to 1 s
    with cluster_for(node, use, job_limits=limits, jobs_per_process=per_process) as cluster:
        jobs = {what: cluster.submit(what) for what in ("limits", "memory", "files", "cpu", "limits")}
        assert cluster.wait(timeout=60)
        assert jobs["limits"].status == dispy.DispyJob.Finished, jobs["limits"].exception
        data, files, cpu_left = jobs["limits"].result
        assert (data, files) == (256 << 20, 64) and 1 <= cpu_left <= 2
        for what, reason in (("memory", "job exceeded its memory limit of 256 MiB"),
                             ("files", "job exceeded its limit of 64 open files"),
                             ("cpu", "job exceeded its CPU time limit of 1 s")):
            assert jobs[what].status == dispy.DispyJob.Terminated and reason in jobs[what].exception, \
                (what, jobs[what].exception)


def test_job_limits_are_checked_by_the_client() -> None:
    with pytest.raises(ValueError, match="unknown keys mem"):
        dispy.JobCluster(use, nodes=["127.0.0.1"], job_limits={"mem": "1g"})
    with pytest.raises(ValueError, match="size such as"):
        dispy.JobCluster(use, nodes=["127.0.0.1"], job_limits={"memory": "lots"})
