"""DispyJob: the handle a program gets from ``cluster.submit``; filled in as the job progresses."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from dispy_core.client import futures
from dispy_core.status import FINAL_JOB_STATES, JobStatus

if TYPE_CHECKING:
    from dispy_core.client.cluster import JobCluster


_DONE_LOCK = threading.Lock()
"""Orders a job's completion against the first wait on it (so a waiter's new event is never missed)."""


class DispyJob:
    """One submission of the computation. ``id`` is the only attribute a program should write."""

    Created = JobStatus.Created
    Running = JobStatus.Running
    ProvisionalResult = JobStatus.ProvisionalResult
    Cancelled = JobStatus.Cancelled
    Terminated = JobStatus.Terminated
    Abandoned = JobStatus.Abandoned
    Finished = JobStatus.Finished

    def __init__(self, uid: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.id: Any = uid
        self.args = args
        self.kwargs = kwargs
        self.status: int = JobStatus.Created
        self.result: Any = None
        self.stdout: str | bytes | None = None
        self.stderr: str | bytes | None = None
        self.exception: str | None = None
        self.submit_time: float | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.ip_addr: str | None = None
        self._uid = uid
        self._is_done = False
        self._done_event: threading.Event | None = None
        """Made only when someone waits: an Event (a condition and a lock) per job cost 5 us and most of its memory."""
        self._payload = b""
        self._files: list[tuple[str, str]] = []
        self._node_key: str | None = None
        self._pinned: str | None = None
        self._cluster: weakref.ref[JobCluster] | None = None
        self._exc_object: BaseException | None = None
        """The exception the computation raised, when the node could send it and it loads here."""
        self._future: futures.JobFuture | None = None

    @property
    def host(self) -> str | None:
        """The node's address (the API text's name for ``ip_addr``)."""
        return self.ip_addr

    @property
    def finished(self) -> bool:
        return self._is_done

    @property
    def _done(self) -> threading.Event:
        """The event a waiter blocks on, made on first use (set already when the job is done)."""
        with _DONE_LOCK:
            event = self._done_event
            if event is None:
                event = self._done_event = threading.Event()
                if self._is_done:
                    event.set()
        return event

    def __call__(self, clear: bool = False, timeout: float | None = None) -> Any:
        """Wait until the job is done and return its result (``clear`` drops the arguments kept)."""
        if not self._is_done:
            self._done.wait(timeout)
        if clear:
            self.args, self.kwargs = (), {}
        return self.result

    def wait(self, timeout: float | None = None) -> bool:
        return self._is_done or self._done.wait(timeout)

    @property
    def future(self) -> futures.JobFuture:
        """A ``concurrent.futures.Future`` of the job (see ``dispy_core.client.futures`` for its outcomes):
        for ``concurrent.futures.wait`` / ``as_completed``, callbacks, or mixing with other executors.
        Its callbacks run on the cluster's network thread: keep them short."""
        return futures.future_of(self)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await job`` in any running asyncio loop: the result, or the job's exception (as ``future``)."""
        loop = asyncio.get_running_loop()
        cluster = self._cluster() if self._cluster is not None else None
        if cluster is not None and cluster._loop.loop is loop:
            raise RuntimeError("a job cannot be awaited on its cluster's own loop (a hook or callback): "
                               "await it from the program's loop")
        return asyncio.wrap_future(self.future, loop=loop).__await__()

    def _finish(self) -> None:
        self._payload = b""
        with _DONE_LOCK:
            self._is_done = True
            event = self._done_event
        if event is not None:
            event.set()
        futures.resolve(self)

    def __lt__(self, other: DispyJob) -> bool:
        return self._uid < other._uid

    def __repr__(self) -> str:
        try:
            status = JobStatus(self.status).name
        except ValueError:
            status = str(self.status)
        return f"<DispyJob id={self.id!r} status={status} node={self.ip_addr}>"


__all__ = ["DispyJob", "FINAL_JOB_STATES"]
