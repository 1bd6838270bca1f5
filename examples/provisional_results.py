"""Progress from inside a job: ``dispy_provisional_result`` sends a value before the job ends.

    python examples/provisional_results.py

Each provisional result reaches the client's ``job_status`` callback with the status ProvisionalResult
and the value in ``job.result``; the job goes on. Its final result replaces it when it finishes.
"""

from __future__ import annotations

from _local import example_nodes

import dispy


def estimate_pi(samples: int, chunks: int) -> float:
    """Monte Carlo estimate of pi, reporting the estimate after every chunk of samples."""
    import random

    inside = done = 0
    for _ in range(chunks):
        for _ in range(samples // chunks):
            x, y = random.random(), random.random()
            inside += x * x + y * y <= 1.0
        done += samples // chunks
        dispy_provisional_result((done, 4 * inside / done))  # noqa: F821 - the node gives every job this
    return 4 * inside / done


updates: list[tuple[int, float]] = []


def job_status(job: dispy.DispyJob) -> None:
    if job.status == dispy.DispyJob.ProvisionalResult:
        done, estimate = job.result
        updates.append((done, estimate))
        print(f"job {job.id}: {done:>7} samples, pi ~ {estimate:.4f}", flush=True)


def main() -> int:
    with example_nodes(1) as where:
        with dispy.JobCluster(estimate_pi, nodes=where.nodes, secret=where.secret, job_status=job_status) as cluster:
            job = cluster.submit(200_000, 5)
            pi = job()
    print(f"final estimate {pi:.4f} after {len(updates)} provisional results")
    assert job.status == dispy.DispyJob.Finished and abs(pi - 3.1416) < 0.05, (job.status, pi)
    assert [done for done, _ in updates] == [40_000, 80_000, 120_000, 160_000, 200_000], updates
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
