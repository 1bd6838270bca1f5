"""The other libraries bench_jobs.py runs the same workloads on, behind one small futures-like interface.

``ProcessPoolExecutor(2)`` is the baseline; loky (the ``bench`` extra), Ray and Dask (installed by hand) are
measured when they can be imported, and reported as not installed otherwise. Each one runs 2 worker processes
on this machine and nothing else: Ray with ``num_cpus=2`` on 127.0.0.1 (no dashboard, no usage report), Dask
with a ``LocalCluster`` of 2 one-thread worker processes on 127.0.0.1 (no dashboard).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

WORKERS = 2


class Library:
    """One contender: started once, then ``submit`` / ``result`` / ``wait`` as with concurrent.futures."""

    name = ""
    module = ""
    """The module that must be importable (empty: always there)."""
    install_hint = ""

    def missing(self) -> str | None:
        """Why this library cannot be measured here (None: it can)."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"not installed ({self.install_hint})"
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def submit(self, fn: Callable[..., Any], arg: Any) -> Any:
        raise NotImplementedError

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout)

    def wait(self, handles: list[Any], timeout: float) -> None:
        concurrent.futures.wait(handles, timeout)


class ProcessPool(Library):
    """``concurrent.futures.ProcessPoolExecutor(2)``: the baseline."""

    name = f"ProcessPool({WORKERS})"

    def __init__(self) -> None:
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def submit(self, fn: Callable[..., Any], arg: Any) -> Any:
        assert self.pool is not None
        return self.pool.submit(fn, arg)


class Loky(ProcessPool):
    """``loky.get_reusable_executor(2)``: joblib's process pool (cloudpickle, reused workers)."""

    name = f"loky({WORKERS})"
    module = "loky"
    install_hint = "pip install -e '.[bench]'"

    def start(self) -> None:
        import loky

        self.pool = loky.get_reusable_executor(max_workers=WORKERS)


class Ray(Library):
    """``ray.remote`` tasks on a local Ray instance of 2 CPUs."""

    name = f"Ray({WORKERS})"
    module = "ray"
    install_hint = "pip install ray"

    def __init__(self) -> None:
        self._remote: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no report sent anywhere: loopback only
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)

    def stop(self) -> None:
        import ray

        ray.shutdown()

    def submit(self, fn: Callable[..., Any], arg: Any) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            import ray

            remote = self._remote[fn] = ray.remote(fn)
        return remote.remote(arg)

    def result(self, handle: Any, timeout: float) -> Any:
        import ray

        return ray.get(handle, timeout=timeout)

    def wait(self, handles: list[Any], timeout: float) -> None:
        import ray

        ray.wait(handles, num_returns=len(handles), timeout=timeout, fetch_local=True)


class Dask(Library):
    """``dask.distributed``: a ``LocalCluster`` of 2 worker processes (one thread each) and its ``Client``."""

    name = f"Dask({WORKERS})"
    module = "distributed"
    install_hint = "pip install 'dask[distributed]'"

    def __init__(self) -> None:
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, fn: Callable[..., Any], arg: Any) -> Any:
        return self.client.submit(fn, arg, pure=False)  # pure=True would run equal calls once

    def wait(self, handles: list[Any], timeout: float) -> None:
        from distributed import wait

        wait(handles, timeout=timeout)


OTHERS: dict[str, type[Library]] = {"loky": Loky, "ray": Ray, "dask": Dask}
"""The libraries besides the baseline, by the name ``--others`` takes."""
