"""JobCluster against real dispynode processes on loopback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for

EXECUTORS = ["fork", "spawn"]


def double(x: int) -> int:
    return x * 2


def chatty(x: int) -> int:
    import sys

    print("out", x)
    print("err", x, file=sys.stderr)
    return x + 1


def fails(x: int) -> int:
    raise ValueError(f"bad value {x}")


def node_globals() -> tuple[Any, ...]:
    return (dispy_job_path, dispy_node_name, dispy_node_ip_addr, os.getcwd(),  # type: ignore[name-defined] # noqa: F821
            time.time() > 0, sys.version_info[0])  # type: ignore[name-defined] # noqa: F821


def crash(how: str) -> int:
    import os
    import signal

    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGSEGV)
    return 0


def cluster_for(node: NodeProcess, computation: Any, **kwargs: Any) -> dispy.JobCluster:
    kwargs.setdefault("nodes", [node.host])
    return dispy.JobCluster(computation, dispy_port=node.base_port, **kwargs)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_results_output_and_exceptions(node_factory: Callable[..., NodeProcess], executor: str) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, chatty) as cluster:
        jobs = [cluster.submit(i) for i in range(6)]
        assert all(job is not None for job in jobs)
        assert [job() for job in jobs] == [i + 1 for i in range(6)]  # type: ignore[misc]
        job = jobs[4]
        assert job is not None
        assert job.status == dispy.DispyJob.Finished
        assert job.stdout == "out 4\n" and job.stderr == "err 4\n"
        assert job.exception is None
        assert job.ip_addr == "127.0.0.1" == job.host
        assert job.start_time is not None and job.end_time is not None and job.start_time <= job.end_time
    with cluster_for(node, fails) as cluster:
        job = cluster.submit(7)
        assert job is not None and job() is None
        assert job.status == dispy.DispyJob.Terminated
        assert job.exception is not None and "ValueError: bad value 7" in job.exception
        assert "Traceback" in job.exception


@pytest.mark.parametrize("executor", EXECUTORS)
def test_job_that_kills_its_process_is_reported_at_once(node_factory: Callable[..., NodeProcess],
                                                        executor: str) -> None:
    node = node_factory("--executor", executor)
    with cluster_for(node, crash) as cluster:
        start = time.monotonic()
        exited = cluster.submit("exit")
        segv = cluster.submit("segv")
        assert exited is not None and segv is not None
        exited(), segv()
        assert time.monotonic() - start < 20
        assert exited.status == dispy.DispyJob.Terminated and segv.status == dispy.DispyJob.Terminated
        assert exited.exception is not None and "3" in exited.exception
        assert segv.exception is not None and "SIGSEGV" in segv.exception
    with cluster_for(node, double) as cluster:  # the node keeps serving
        job = cluster.submit(21)
        assert job is not None and job() == 42


def test_injected_globals(node: NodeProcess) -> None:
    with cluster_for(node, node_globals) as cluster:
        job = cluster.submit()
        assert job is not None
        result = job()
        assert result is not None, job.exception
        job_path, name, ip_addr, cwd, time_ok, major = result
        assert Path(job_path).is_relative_to(node.prefix.resolve()) and cwd == job_path
        assert name and ip_addr == "127.0.0.1" and time_ok and major == 3


def test_lambda_closure_and_keyword_arguments(node: NodeProcess) -> None:
    factor = 3

    def scaled(x: int, offset: int = 0) -> int:
        return x * factor + offset

    with cluster_for(node, scaled) as cluster:
        job = cluster.submit(5, offset=1)
        assert job is not None and job() == 16
    with cluster_for(node, lambda s: s.upper()) as cluster:
        job = cluster.submit("abc")
        assert job is not None and job() == "ABC"


def test_wrong_secret_is_refused(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(secret="right-secret")
    cluster = cluster_for(node, double, secret="wrong-secret")
    try:
        job = cluster.submit(1)
        assert job is not None
        assert job.wait(timeout=30)  # refused for good: the job ends, saying why (it never waits for ever)
        assert job.status == dispy.DispyJob.Abandoned and "authentication failed" in str(job.exception)
        assert cluster.status()["nodes"] == []
    finally:
        assert cluster.close(timeout=0, terminate=True) is True
    assert job.status == dispy.DispyJob.Abandoned
    deadline = time.monotonic() + 5
    while "authentication failed" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "authentication failed" in node.log()
    assert "right-secret" not in node.log() and "wrong-secret" not in node.log()
    with cluster_for(node, double, secret="right-secret") as cluster:
        job = cluster.submit(4)
        assert job is not None and job() == 8


def test_secret_from_environment(node_factory: Callable[..., NodeProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    node = node_factory(env={"DISPY_SECRET": "from-env"})
    monkeypatch.setenv("DISPY_SECRET", "from-env")
    with cluster_for(node, double) as cluster:
        job = cluster.submit(5)
        assert job is not None and job(timeout=30) == 10


def test_tls(node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    from dispy_core.testing.certs import make_self_signed

    certfile, keyfile = make_self_signed(tmp_path / "certs")
    node = node_factory("--certfile", str(certfile), "--keyfile", str(keyfile), secret="tls-secret")
    with cluster_for(node, double, secret="tls-secret", certfile=str(certfile), keyfile=str(keyfile)) as cluster:
        job = cluster.submit(8)
        assert job is not None and job(timeout=30) == 16
    # A client without TLS, or with another certificate, gets nowhere.
    other_cert, other_key = make_self_signed(tmp_path / "other", common_name="intruder")
    for kwargs in ({}, {"certfile": str(other_cert), "keyfile": str(other_key)}):
        cluster = cluster_for(node, double, secret="tls-secret", **kwargs)
        job = cluster.submit(1)
        assert not cluster.wait(timeout=2)
        assert cluster.status()["nodes"] == []
        cluster.close(timeout=0, terminate=True)
    # A client that trusts the node while the node does not trust it is told so, not just "closed"
    cluster = cluster_for(node, double, secret="tls-secret", certfile=str(other_cert), keyfile=str(other_key),
                          cafile=str(certfile))
    try:
        [reason] = wait_for(lambda: list(cluster.status()["failed_nodes"].values()), timeout=20)
        assert "most likely refused our certificate" in reason, reason
    finally:
        cluster.close(timeout=0, terminate=True)


def test_ipv6_loopback(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(host="::1")
    with cluster_for(node, double, nodes=["::1"]) as cluster:
        job = cluster.submit(11)
        assert job is not None and job(timeout=30) == 22
        assert job.ip_addr == "::1"


def test_program_computation(node: NodeProcess, tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("import sys\nprint('args', *sys.argv[1:])\nsys.exit(int(sys.argv[1]))\n")
    with cluster_for(node, str(program)) as cluster:
        jobs = [cluster.submit(code, "x y") for code in (0, 3)]
        assert [job() for job in jobs if job is not None] == [0, 3]
        assert jobs[1] is not None and jobs[1].stdout == b"args 3 x y\n"
        assert jobs[1].status == dispy.DispyJob.Finished


def test_thread_safe_submission_and_callbacks_off_loop(node: NodeProcess) -> None:
    seen: list[tuple[int, str]] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def job_status(job: dispy.DispyJob) -> None:
        with lock:
            seen.append((job.result, threading.current_thread().name))

    def cluster_status(status: int, node_: Any, job: Any) -> None:
        with lock:
            statuses.append(status)

    with cluster_for(node, double, job_status=job_status, cluster_status=cluster_status) as cluster:
        def submitter(base: int) -> None:
            for i in range(25):
                cluster.submit(base + i)

        threads = [threading.Thread(target=submitter, args=(k * 100,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cluster.wait(timeout=60)
    deadline = time.monotonic() + 5
    while len(seen) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(r for r, _ in seen) == sorted(2 * (k * 100 + i) for k in range(4) for i in range(25))
    assert {name for _, name in seen} == {"dispy-callbacks"}
    assert dispy.DispyNode.Initialized in statuses and dispy.DispyJob.Finished in statuses


def test_submit_node_job_id_and_print_status(node: NodeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with cluster_for(node, double) as cluster:
        job = cluster.submit_node("127.0.0.1", 2)
        assert job is not None
        job.id = "my-job"
        assert job() == 4 and job.id == "my-job"
        cluster.print_status()
    out = capsys.readouterr().out
    assert "Node" in out and "Sec/Job" in out and "Sent" in out and "Rcvd" in out and "127.0.0.1" in out


def test_context_manager_propagates_exceptions(node: NodeProcess) -> None:
    with pytest.raises(KeyError), cluster_for(node, double) as cluster:
        cluster.submit(1)
        raise KeyError("from the program")


def test_sigterm_stops_node_and_its_job_processes(node: NodeProcess) -> None:
    def sleeper(seconds: int) -> int:
        time.sleep(seconds)
        return seconds

    cluster = cluster_for(node, sleeper)
    try:
        job = cluster.submit(60)
        assert job is not None
        deadline = time.monotonic() + 20
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            children = psutil.Process(node.proc.pid).children(recursive=True)
            if len(children) >= 2:  # the computation's host and the job
                break
            time.sleep(0.05)
        assert len(children) >= 2
        assert node.stop() == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        job(timeout=20)
        assert job.status in (dispy.DispyJob.Abandoned, dispy.DispyJob.Terminated, dispy.DispyJob.Cancelled)
    finally:
        cluster.close(timeout=0, terminate=True)
