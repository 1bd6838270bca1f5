"""A host's job processes as it sees them, how it learns that a child exited, and how one died."""

from __future__ import annotations

import os
import selectors
import signal
from collections.abc import Callable
from typing import Any

from dispy_core.joblimits import summary
from dispy_plugins.executor_host import ipc, proctree, rlimits
from dispy_plugins.executor_host.capture import Captured


class JobProc:
    """A job process: an idle spare waiting for a job's arguments, then running that job; with
    ``jobs_per_process`` above 1, a spare again after each job until it has run that many."""

    __slots__ = ("uid", "pid", "pipe", "wfd", "popen", "reader", "result", "cancelled", "status", "start",
                 "procs", "bad", "reported", "token", "runs", "out", "err", "outbuf", "errbuf")

    def __init__(self, pid: int, pipe: int, wfd: int, max_frame: int, popen: Any = None,
                 out: int = -1, err: int = -1) -> None:
        self.uid = -1  # -1 while a spare
        self.pid = pid
        self.pipe = pipe  # read end of the job's result pipe
        self.wfd = wfd  # write end of its argument pipe, -1 once the job is handed over
        self.out = out  # read ends of the pipes that are its fds 1 and 2 during a job (-1 once closed)
        self.err = err
        self.outbuf = Captured()
        self.errbuf = Captured()
        self.popen = popen
        self.reader = ipc.FrameReader(max_frame)
        self.result: ipc.Frame | None = None
        self.cancelled = False
        self.status: int | None = None  # wait status once reaped
        self.start = 0.0
        self.procs: list[Any] = []
        self.bad = ""
        self.reported = False
        self.token = ""  # proctree.job_token: in the environment the process started with
        self.runs = 0  # jobs handed to this process so far

    def recycle(self) -> None:
        """Its job is reported and the process waits for the next one: forget the job."""
        self.uid = -1
        self.result = None
        self.reported = False
        self.procs = []


class ExitWatch:
    """Calls ``callback(wait_status)`` when a child exits: pidfds, or SIGCHLD via a wakeup fd."""

    def __init__(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        self._use_pidfd = hasattr(os, "pidfd_open")
        self._pending: dict[int, Callable[[int], None]] = {}
        self._pidfds: dict[int, int] = {}
        self._wake_r = -1
        if not self._use_pidfd:
            self._wake_r, wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(wake_w, False)
            signal.set_wakeup_fd(wake_w)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)
            sel.register(self._wake_r, selectors.EVENT_READ, self._on_sigchld)

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Watch ``pid``; watching it again only replaces the callback."""
        known = pid in self._pending
        self._pending[pid] = callback
        if known:
            return
        if self._use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # already gone and reaped elsewhere: report it dead
                self._pending.pop(pid)
                callback(0)
                return
            self._pidfds[pid] = fd
            self._sel.register(fd, selectors.EVENT_READ, lambda: self._reap(pid))
        else:
            self._reap(pid, os.WNOHANG)

    def _reap(self, pid: int, flags: int = 0) -> None:
        try:
            got, status = os.waitpid(pid, flags)
        except ChildProcessError:
            got, status = pid, 0
        if got == 0:
            return
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._sel.unregister(fd)
            os.close(fd)
        callback = self._pending.pop(pid, None)
        if callback is not None:
            callback(status)

    def _on_sigchld(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        for pid in list(self._pending):
            self._reap(pid, os.WNOHANG)

    def child_reset(self) -> None:
        """In a forked job: forget the host's SIGCHLD wiring."""
        if not self._use_pidfd:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def describe_death(status: int, limits: dict[str, int]) -> str:
    """How a job process ended without a result, with the limit that explains it (if any)."""
    text = f"job process {proctree.describe_wait_status(status)}"
    if os.WIFSIGNALED(status):
        why = rlimits.explain_signal(os.WTERMSIG(status), limits)
        if why:
            return f"{why} ({text})"
    return f"{text} (the job's limits: {summary(limits)})" if limits else text
