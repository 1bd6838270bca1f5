"""``concurrent.futures`` and ``asyncio``: ``dispy.DispyExecutor``, ``job.future``, ``as_completed``, ``await job``.

    python examples/futures_executor.py

``DispyExecutor`` is a ``concurrent.futures.Executor``: ``submit`` and ``map`` take any picklable function
per call, as ``ProcessPoolExecutor`` does, and run it on the nodes. A ``JobCluster``'s jobs are futures too:
``job.future`` for ``concurrent.futures.wait``, ``cluster.as_completed()``, and ``await job`` in asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math

from _local import example_nodes

import dispy


def digits_of_factorial(n: int) -> int:
    import math

    return len(str(math.factorial(n)))


def fails(n: int) -> float:
    return 1 / n  # n = 0 raises ZeroDivisionError on the node


async def gather_on(cluster: dispy.JobCluster) -> list[int]:
    jobs = [cluster.submit(n) for n in (100, 200, 300)]
    return list(await asyncio.gather(*jobs))  # each job is awaitable


def main() -> int:
    with example_nodes(1) as where:
        with dispy.DispyExecutor(nodes=where.nodes, secret=where.secret) as executor:
            roots = list(executor.map(math.sqrt, [1, 4, 9, 16]))  # any function, per call
            print(f"map(math.sqrt): {roots}")
            future = executor.submit(fails, 0)
            try:
                future.result(timeout=60)
            except ZeroDivisionError as exc:  # the job's own exception, its remote traceback as __cause__
                print(f"submit(fails, 0) raised {type(exc).__name__}: {exc}")
            else:
                raise AssertionError("the failing call did not raise")
        assert roots == [1.0, 2.0, 3.0, 4.0]

        with dispy.JobCluster(digits_of_factorial, nodes=where.nodes, secret=where.secret) as cluster:
            jobs = [cluster.submit(n) for n in (10, 50, 100, 500)]
            done, _ = concurrent.futures.wait([job.future for job in jobs], timeout=60)
            assert len(done) == 4
            for job in cluster.as_completed(jobs, timeout=60):
                print(f"{job.args[0]}! has {job.result} digits")
            awaited = asyncio.run(gather_on(cluster))
            print(f"awaited: {awaited}")
            assert awaited == [digits_of_factorial(n) for n in (100, 200, 300)]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
