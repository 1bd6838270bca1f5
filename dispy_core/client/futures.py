"""``job.future``: a DispyJob seen as a ``concurrent.futures.Future`` (and, through it, as an awaitable).

The job's final status decides the future's outcome:

- Finished: its result (``job.result``); a result the client could not load raises ``JobFailed``.
- Terminated because the computation raised: that exception itself when the node could serialize it and
  the client can load it, with the node's traceback text as its ``__cause__`` (a ``RemoteTraceback``, as
  ``ProcessPoolExecutor`` does), so a traceback printed on the client shows where the job failed.
  Otherwise (process killed, exception not loadable, node gone...) ``JobTerminated`` with ``job.exception``.
- Abandoned: ``JobAbandoned`` with the reason.
- Cancelled: the future is cancelled (``result()`` raises ``CancelledError``).

``job()`` and ``job.exception`` keep the original's meaning (the result or None, and the traceback text).
"""

from __future__ import annotations

import base64
import concurrent.futures
import sys
import threading
from typing import TYPE_CHECKING, Any

from dispy_core.errors import DispyError
from dispy_core.status import JobStatus

if TYPE_CHECKING:
    from dispy_core.client.job import DispyJob

__all__ = ["JobAbandoned", "JobFailed", "JobFuture", "JobTerminated", "RemoteTraceback", "load_exception",
           "resolve"]

_RESOLVE_LOCK = threading.Lock()
"""Orders a future's lazy creation against its job's end (both rare: once per job at most)."""


class RemoteTraceback(Exception):
    """The traceback of a job's exception as its node formatted it: the ``__cause__`` of what the future raises."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class JobFailed(DispyError):
    """A job's future has no result to give; ``job`` is the DispyJob, ``str()`` says why."""

    def __init__(self, message: str, job: DispyJob | None = None) -> None:
        super().__init__(message)
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self),)  # the job (with its arguments) does not travel with the error


class JobTerminated(JobFailed):
    """The job ended Terminated without an exception the client can raise (killed, out of memory, its
    process died, or its exception could not be serialized or loaded): ``job.exception`` is the text."""


class JobAbandoned(JobFailed):
    """The job was given up without running to its end (no usable node, node lost and not reentrant...)."""


class JobFuture(concurrent.futures.Future[Any]):
    """The future of one job. ``cancel()`` succeeds only while the job waits for a node (as a
    ``concurrent.futures`` call that has not started); the cluster then removes the job."""

    def __init__(self, job: DispyJob) -> None:
        super().__init__()
        self._job = job

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        job = self._job
        cluster = job._cluster() if job._cluster is not None else None
        if cluster is None or job.status != JobStatus.Created:
            return False
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait / as_completed
        cluster._cancel_soon(job)
        return True

    def __repr__(self) -> str:
        return f"<JobFuture of job {self._job.id!r} {super().__repr__()[1:-1]}>"


def load_exception(encoded: str, loads: Any) -> BaseException | None:
    """The job's exception from a JobResult's ``exception_object`` (None if absent or not loadable here:
    its class may exist only on the node)."""
    if not encoded:
        return None
    try:
        exc = loads(base64.b64decode(encoded, validate=True))
    except Exception:
        return None
    if not isinstance(exc, BaseException):
        return None
    _as_program_class(exc)
    return exc


def _as_program_class(exc: BaseException) -> None:
    """A class of the program's ``__main__`` reached the node by value (with a function), so the exception
    comes back as an instance of a copy: make it an instance of the program's own class again, so that
    ``except ThatClass`` catches it."""
    cls = type(exc)
    if cls.__module__ != "__main__":
        return
    main = sys.modules.get("__main__")
    own = getattr(main, cls.__qualname__, None) if "." not in cls.__qualname__ else None
    if own is None or own is cls or not isinstance(own, type) or not issubclass(own, BaseException):
        return
    try:
        exc.__class__ = own
    except TypeError:  # a different layout: not the same class after all
        pass


def future_of(job: DispyJob) -> JobFuture:
    """The job's future, made on first use (most programs never ask for it)."""
    with _RESOLVE_LOCK:
        future = job._future
        if future is None:
            future = job._future = JobFuture(job)
            if job._is_done:
                _settle(future, job)
    return future


def resolve(job: DispyJob) -> None:
    """The job reached its final status: settle its future if one was made (``_done`` is set already)."""
    with _RESOLVE_LOCK:
        future = job._future
        if future is not None and not future.done():
            _settle(future, job)


def _settle(future: JobFuture, job: DispyJob) -> None:
    status = job.status
    if status == JobStatus.Cancelled:
        concurrent.futures.Future.cancel(future)
        future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait / as_completed
        return
    if status == JobStatus.Finished:
        if job.exception and job.result is None:
            future.set_exception(JobFailed(f"job {job.id!r}: {job.exception}", job))
        else:
            future.set_result(job.result)
        return
    text = str(job.exception or "").rstrip()
    if status == JobStatus.Abandoned:
        future.set_exception(JobAbandoned(f"job {job.id!r} was abandoned: {text or 'no reason given'}", job))
        return
    original = job._exc_object
    if original is not None:
        if text:
            original.__cause__ = RemoteTraceback(text)
        future.set_exception(original)
        return
    future.set_exception(JobTerminated(f"job {job.id!r} was terminated: {text or 'no reason given'}", job))
