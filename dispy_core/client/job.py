"""DispyJob: the handle a program gets from ``cluster.submit``; filled in as the job progresses."""

from __future__ import annotations

import threading
from typing import Any

from dispy_core.status import FINAL_JOB_STATES, JobStatus


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
        self._done = threading.Event()
        self._payload = b""
        self._files: list[tuple[str, str]] = []
        self._node_key: str | None = None
        self._pinned: str | None = None

    @property
    def host(self) -> str | None:
        """The node's address (the API text's name for ``ip_addr``)."""
        return self.ip_addr

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def __call__(self, clear: bool = False, timeout: float | None = None) -> Any:
        """Wait until the job is done and return its result (``clear`` drops the arguments kept)."""
        self._done.wait(timeout)
        if clear:
            self.args, self.kwargs = (), {}
        return self.result

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _finish(self) -> None:
        self._payload = b""
        self._done.set()

    def __lt__(self, other: DispyJob) -> bool:
        return self._uid < other._uid

    def __repr__(self) -> str:
        try:
            status = JobStatus(self.status).name
        except ValueError:
            status = str(self.status)
        return f"<DispyJob id={self.id!r} status={status} node={self.ip_addr}>"


__all__ = ["DispyJob", "FINAL_JOB_STATES"]
