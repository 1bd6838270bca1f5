"""``dispy.DispyExecutor``: the ``concurrent.futures.Executor`` face of a cluster.

A JobCluster runs one computation; an executor runs whatever function each call names. The cluster's
computation here is a fixed trampoline, :func:`run_calls`, and each job carries the function to call,
serialized on the client: by reference (module and name) when it comes from the standard library or an
installed package, which every node has; by value with dill otherwise (``__main__``, a test module, the
program's own files), so that nodes need not have the program's modules. ``map`` with ``chunksize`` > 1
runs that many calls in one job, which pays when calls are much shorter than a job's round trip.

Futures are the jobs' own (``job.future``): an exception raised by the function is raised again on
the client, with the node's traceback as its ``__cause__``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dispy_core.byvalue import main_clone
from dispy_core.client.cluster import JobCluster
from dispy_core.client.job import DispyJob
from dispy_core.errors import SerializationError
from dispy_core.status import JobStatus

__all__ = ["DispyExecutor", "run_calls", "serialize_function"]


def run_calls(function: bytes, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], batch: bool) -> Any:
    """The executor's computation, run on a node: load ``function`` and make ``calls`` with it.

    ``batch`` False: one call, its value returned as is. True: the list of the values of every call (an
    exception ends the batch, as it ends a chunk of ``ProcessPoolExecutor.map``)."""
    import dill  # a dependency of dispy: every node has it; it loads plain pickles too

    fn = dill.loads(function)
    if not batch:
        args, kwargs = calls[0]
        return fn(*args, **kwargs)
    return [fn(*args, **kwargs) for args, kwargs in calls]


def _installed_prefixes() -> tuple[str, ...]:
    """Where modules every node has live: the standard library and installed packages."""
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = {os.path.realpath(sysconfig.get_path(name)) for name in names if sysconfig.get_path(name)}
    return tuple(sorted(path + os.sep for path in paths))


_INSTALLED = _installed_prefixes()


def _by_reference(fn: Any) -> bool:
    """True if ``fn`` can travel by name: it is not a plain function of the program's own code."""
    if not isinstance(fn, types.FunctionType):
        return True  # builtins, methods of installed classes, functools.partial...: pickle decides
    module = sys.modules.get(fn.__module__ or "")
    if module is None or fn.__module__ == "__main__" or "<locals>" in fn.__qualname__:
        return False
    path = getattr(module, "__file__", None)
    return path is not None and os.path.realpath(path).startswith(_INSTALLED)


def serialize_function(fn: Callable[..., Any]) -> bytes:
    """``fn`` as the trampoline loads it (see the module's docstring); SerializationError if it cannot be."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    import dill

    try:
        if _by_reference(fn):
            try:
                return pickle.dumps(fn, protocol=5)
            except (pickle.PicklingError, AttributeError, TypeError):
                pass  # a partial of a local function, for example: by value below
        if isinstance(fn, types.FunctionType) and fn.__module__ != "__main__":
            fn = main_clone(fn)
        return bytes(dill.dumps(fn, protocol=5, recurse=True, byref=False))
    except Exception as exc:  # dill raises many kinds
        raise SerializationError(f"cannot serialize function {getattr(fn, '__qualname__', fn)!r}: {exc}") from exc


class DispyExecutor(concurrent.futures.Executor):
    """Runs any picklable function on the cluster's nodes: ``submit(fn, *args, **kwargs)`` and
    ``map(fn, *iterables, timeout=None, chunksize=1)`` as ``ProcessPoolExecutor`` has them.

    ``nodes`` and the other keyword arguments are ``JobCluster``'s (``secret``, ``dispy_port``,
    ``jobs_per_process``...); ``cluster`` is that JobCluster, for ``print_status`` or ``wait(progress=True)``.
    """

    def __init__(self, nodes: Any = None, **options: Any) -> None:
        if "computation" in options:
            raise TypeError("DispyExecutor runs the functions given to submit and map: it takes no computation")
        self.cluster = JobCluster(run_calls, nodes=nodes, **options)
        self._lock = threading.Lock()
        self._shutdown = False
        self._closer: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a node; the job's future."""
        return self._submit(serialize_function(fn), [(args, kwargs)], batch=False).future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over the iterables' items in parallel, results in order; all calls are submitted at once.

        ``chunksize`` calls go in one job. TimeoutError if a result is not there ``timeout`` seconds after
        this call; an exception a call raised is raised when its result is reached."""
        if type(chunksize) is not int or chunksize < 1:
            raise ValueError(f"chunksize must be an integer of at least 1, not {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        function = serialize_function(fn)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(args, {}) for args in zip(*iterables, strict=False)]
        jobs = [self._submit(function, calls[start:start + chunksize], batch=chunksize > 1)
                for start in range(0, len(calls), chunksize)]
        return self._results([job.future for job in jobs], deadline, chunksize > 1)

    @staticmethod
    def _results(futures: list[concurrent.futures.Future[Any]], deadline: float | None,
                 batch: bool) -> Iterator[Any]:
        futures.reverse()  # popped in order: the program's iterator holds no finished future longer than needed
        try:
            while futures:
                future = futures.pop()
                value = future.result(None if deadline is None else deadline - time.monotonic())
                if batch:
                    yield from value
                else:
                    yield value
        finally:
            for future in futures:  # the program left the loop: the calls not started yet are not wanted
                future.cancel()

    def _submit(self, function: bytes, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], batch: bool) -> DispyJob:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            job = self.cluster.submit(function, calls, batch)
        if job is None:  # the cluster logged why
            raise SerializationError("the call's arguments cannot be serialized (see the dispy log)")
        return job

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` cancels those still waiting for a node. With ``wait``, returns
        once every call ended and the nodes are released; without, that happens in the background."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
        if cancel_futures:
            for job in list(self.cluster._held):
                if job.status == JobStatus.Created:
                    job.future.cancel()
        if first:
            self._closer = threading.Thread(target=self.cluster.close, name="dispy-executor-close", daemon=True)
            self._closer.start()
        if wait and self._closer is not None:
            self._closer.join()
