"""Large payloads: arguments and results of 100 MB travel (in 8 MiB fragments) without dropping the
connection; above max_payload the sending side refuses before sending and the job says why.

Measured before: a 100 MB argument, result or provisional result killed the connection ("closed by
peer"), and with reentrant=True one such job took down both nodes in turn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dispy
from dispy_core.testing.nodes import NodeProcess

MB = 1_000_000


def size_and_echo(data: bytes, back: int) -> tuple[int, bytes]:
    return len(data), b"r" * back


def test_a_100_mb_argument_and_a_100_mb_result_travel(node: NodeProcess, tmp_path: Path) -> None:
    with dispy.JobCluster(size_and_echo, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)],
                          recover_file=str(tmp_path / "r")) as cluster:
        job = cluster.submit(b"a" * (100 * MB), 100 * MB)
        assert job is not None
        size, back = job(timeout=120)
        assert job.status == dispy.DispyJob.Finished, job.exception
        assert size == 100 * MB and len(back) == 100 * MB
        small = cluster.submit(b"x", 1)
        assert small is not None and small(timeout=30) == (1, b"r")  # the same connection, still there


def test_above_max_payload_the_client_refuses_before_sending(node: NodeProcess, tmp_path: Path) -> None:
    with dispy.JobCluster(size_and_echo, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)],
                          max_payload=2 * MB, recover_file=str(tmp_path / "r")) as cluster:
        job = cluster.submit(b"a" * (3 * MB), 1)
        assert job is not None and job.status == dispy.DispyJob.Abandoned
        assert "above max_payload (2000000 bytes)" in str(job.exception)
        fine = cluster.submit(b"a" * MB, 1)
        assert fine is not None and fine(timeout=30) == (MB, b"r")


def test_a_result_above_the_nodes_max_payload_ends_the_job_not_the_connection(
        node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    site = tmp_path / "node.toml"
    site.write_text(f"[transport]\nmax_payload = {2 * MB}\n")
    node = node_factory(env={"DISPY_CONFIG": str(site)})
    with dispy.JobCluster(size_and_echo, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)],
                          reentrant=True, recover_file=str(tmp_path / "r")) as cluster:
        job = cluster.submit(b"a", 3 * MB)
        assert job is not None and job(timeout=60) is None
        assert job.status == dispy.DispyJob.Terminated and "above max_payload" in str(job.exception)
        after = cluster.submit(b"a", 10)
        assert after is not None and after(timeout=30) == (1, b"r" * 10)
        assert node.proc.poll() is None
