"""Enforcing a computation's job limits (:mod:`dispy_core.joblimits`) in its job processes, with setrlimit.

A job process sets them when a job starts; the processes it starts inherit them, each process with
its own budget (setrlimit counts per process, not per job):

- ``memory``: ``RLIMIT_DATA`` on Linux (heap and private writable mappings: what the job allocates,
  not the shared libraries or the address space reserved by threads, which ``RLIMIT_AS`` would count
  and which breaks numerical libraries at sizes their data never reaches), ``RLIMIT_AS`` elsewhere. An
  allocation beyond it fails: Python raises ``MemoryError``, which the job reports with the limit.
- ``cpu_time``: ``RLIMIT_CPU``, counted from the job's start (a reused process has used some already).
  At the limit the kernel sends SIGXCPU, whose default action ends the process; the host reports
  "exceeded its CPU time limit". The hard limit, 2 s later, is SIGKILL for a job that ignores SIGXCPU.
  In a process that runs further jobs (``jobs_per_process``) a node that is not root cannot raise the
  hard limit again, so there only the soft limit is set.
- ``open_files``: ``RLIMIT_NOFILE``; the hard limit keeps :data:`FD_RESERVE` more for the job
  process's own use after the job (reporting it), which :func:`release` takes back.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from dispy_core.joblimits import describe
from dispy_plugins.executor_host.lazylog import LazyLogger

logger = LazyLogger("dispynode")

FD_RESERVE = 16
CPU_GRACE = 2
"""Seconds of CPU between SIGXCPU (soft limit) and SIGKILL (hard limit)."""

_MEMORY = "RLIMIT_DATA" if sys.platform.startswith("linux") else "RLIMIT_AS"


def apply(limits: Mapping[str, int], reused: bool = False) -> None:
    """Set this process's limits for the job about to run; ``reused``: it may run further jobs."""
    if not limits:
        return
    import resource

    memory = limits.get("memory")
    if memory:
        which = getattr(resource, _MEMORY)
        _set(resource, which, memory, memory)
    files = limits.get("open_files")
    if files:
        _set(resource, resource.RLIMIT_NOFILE, files, files + FD_RESERVE)
    seconds = limits.get("cpu_time")
    if seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(usage.ru_utime + usage.ru_stime) + 1 + seconds
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if not reused or _privileged():
            hard = soft + CPU_GRACE
        _set(resource, resource.RLIMIT_CPU, soft, hard)


def release(limits: Mapping[str, int]) -> None:
    """After the job: the descriptors kept in reserve, for ending the job's processes and reporting."""
    if limits.get("open_files"):
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        _set(resource, resource.RLIMIT_NOFILE, hard, hard)


def _set(resource: Any, which: int, soft: int, hard: int) -> None:
    inf = resource.RLIM_INFINITY
    _cur_soft, cur_hard = resource.getrlimit(which)
    if cur_hard != inf and not _privileged():
        hard = min(hard, cur_hard)  # only root may raise a hard limit
    if hard != inf:
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot set the job's limit %s to %s: %s", which, soft, exc)


def _privileged() -> bool:
    """Whether this process may raise its hard limits (root; CAP_SYS_RESOURCE alone is not looked for)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def explain_exception(exc: BaseException, limits: Mapping[str, int]) -> str:
    """A line naming the limit a job's exception comes from ("" if none): MemoryError, ENOMEM, EMFILE."""
    if not limits:
        return ""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if limits.get("memory") and (isinstance(exc, MemoryError) or code == errno.ENOMEM):
            return f"job exceeded its memory limit of {describe('memory', limits['memory'])}\n"
        if limits.get("open_files") and code == errno.EMFILE:
            return f"job exceeded its limit of {describe('open_files', limits['open_files'])} open files\n"
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return ""


def explain_signal(signum: int, limits: Mapping[str, int]) -> str:
    """Why a job process was killed by ``signum``: its CPU time limit, or "" (then :func:`joblimits.summary`
    of its limits is the hint)."""
    if limits.get("cpu_time") and signum == getattr(signal, "SIGXCPU", -1):
        return f"job exceeded its CPU time limit of {describe('cpu_time', limits['cpu_time'])}"
    return ""
