"""Whatever a job starts ends when the job ends: subreapers, and ending a process's descendants.

On Linux every job process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process the
job started whose parent exits (a daemon's double fork, ``sh -c 'cmd &'``) is re-parented to the job
process instead of to init, so everything the job started stays below it, whatever sessions or groups
it made. When the job is over, the job process SIGKILLs all of them and reaps them before it reports
(:func:`end_descendants`): a client holding the result knows they are gone and their output is in.
A job process that dies first (a crash, a cancel's SIGKILL) leaves them to the zygote, a subreaper
too, which kills every child it did not fork itself (:func:`strangers`). The host is not a subreaper:
processes that ``setup`` started are its children and must live on.

Elsewhere (no ``prctl``), psutil's view of the tree stands in, which misses re-parented processes;
the host's environment marker (:mod:`proctree`) and the node's cgroup (:mod:`cgroups`) remain.
Reading ``/proc/<pid>/task/<tid>/children`` costs one small read per thread; nothing here runs unless
asked, and a job that started nothing pays only that read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
END_TIMEOUT = 2.0
"""Seconds a job process waits for what it killed to be gone (a process stuck in the kernel) before it
reports anyway."""

_prctl: Any = None
_subreaper = False


def prepare() -> None:
    """Load ``prctl`` now (in the host, before it forks): job processes then only call it."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where that is impossible."""
    global _subreaper
    prepare()
    _subreaper = bool(_prctl) and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return _subreaper


def is_subreaper() -> bool:
    return _subreaper


def children(pid: int) -> list[int]:
    """``pid``'s children, zombies included, from ``/proc`` (psutil where ``/proc`` lacks the list)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    kids: list[int] = []
    listed = False
    for tid in tids:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
        except FileNotFoundError:
            continue  # that thread ended, or this kernel has no such file (psutil below)
        listed = True
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        kids.extend(int(word) for word in data.split())
    if listed:
        return kids
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children()]
    except Exception:  # psutil missing, or the process is gone
        return []


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    level = children(pid)
    while level:
        found.extend(level)
        level = [kid for parent in level for kid in children(parent)]
    return found


def kill(pids: list[int]) -> None:
    sigkill = getattr(signal, "SIGKILL", signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sigkill)


def reap_children() -> int:
    """Reap every child of this process that has ended; how many."""
    reaped = 0
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def end_descendants(timeout: float = END_TIMEOUT) -> int:
    """SIGKILL every process below this one and reap them; how many there were.

    A subreaper sees them all: killed parents hand their children to it, and the next round kills
    those. Returns when nothing is left below, or after ``timeout`` (a process stuck in the kernel).
    """
    if not _subreaper:
        return _end_descendants_psutil(timeout)
    me = os.getpid()
    ended = 0
    deadline = 0.0
    pause = 0.0005
    while True:
        below = descendants(me)
        if not below:
            return ended
        ended = max(ended, len(below))
        kill(below)
        reap_children()
        if not descendants(me):
            return ended
        now = time.monotonic()
        deadline = deadline or now + timeout
        if now > deadline:
            return ended
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _end_descendants_psutil(timeout: float) -> int:
    try:
        import psutil
    except ImportError:
        return 0
    try:
        below = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for proc in below:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(below, timeout=timeout)
    return len(below)


def strangers(known: set[int]) -> list[int]:
    """This process's children that are not in ``known``: for a subreaper that forks job processes,
    what a dead job left behind."""
    return [pid for pid in children(os.getpid()) if pid not in known]
