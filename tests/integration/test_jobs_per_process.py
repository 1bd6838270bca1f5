"""``JobCluster(..., jobs_per_process=N)`` end to end, and the node's bound on it."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]

calls = 0


def count_calls(x: int) -> tuple[int, int, int]:
    global calls
    calls += 1
    return os.getpid(), calls, x * 2  # type: ignore[name-defined] # noqa: F821


def run_jobs(node: NodeProcess, n: int, **kwargs: object) -> list[tuple[int, int, int]]:
    with dispy.JobCluster(count_calls, nodes=["127.0.0.1"], dispy_port=node.base_port, **kwargs) as cluster:
        jobs = [cluster.submit(i) for i in range(n)]
        assert cluster.wait(timeout=60)
        results = []
        for i, job in enumerate(jobs):
            assert job is not None and job.status == dispy.DispyJob.Finished, job and job.exception
            pid, count, doubled = job.result
            assert doubled == 2 * i
            results.append((pid, count, doubled))
        return results


def test_jobs_share_processes_up_to_the_bound(node: NodeProcess) -> None:
    results = run_jobs(node, 60, jobs_per_process=10)
    per_pid = collections.Counter(pid for pid, _, _ in results)
    assert max(per_pid.values()) <= 10
    assert len(per_pid) < 60  # processes were reused
    assert max(count for _, count, _ in results) > 1


def test_default_runs_every_job_in_a_fresh_process(node: NodeProcess) -> None:
    results = run_jobs(node, 20)
    assert len({pid for pid, _, _ in results}) == 20
    assert {count for _, count, _ in results} == {1}


def test_node_config_bounds_what_clients_ask(node_factory: Factory, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[executor]\nmax_jobs_per_process = 1\n")
    node = node_factory(env={"DISPY_CONFIG": str(site)})
    results = run_jobs(node, 12, jobs_per_process=1000)
    assert len({pid for pid, _, _ in results}) == 12  # the node's admin said: a fresh process per job


def test_bad_node_bound_stops_the_node_with_a_clear_error(node_factory: Factory, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[executor]\nmax_jobs_per_process = 0\n")
    with pytest.raises(RuntimeError, match="max_jobs_per_process"):
        node_factory(env={"DISPY_CONFIG": str(site)}, ready_timeout=20)


@pytest.mark.parametrize("value", [0, -3, "10", 1.5, None])
def test_bad_jobs_per_process_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="jobs_per_process"):
        dispy.JobCluster(count_calls, nodes=["127.0.0.1"], jobs_per_process=value)
