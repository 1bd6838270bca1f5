"""The fork server of a fork-mode host: it forks job processes so that the host does not have to.

A fork costs the forking process its page-table copy and, afterwards, a page fault for the first write
to each of its pages. The host is on every job's path (it passes arguments and results along), so
forking there delays the jobs around each fork. The zygote is forked from the host once, after setup,
so it holds the same namespace. It does nothing but wait and fork, on whichever CPU is free, and it
touches few pages between forks.

The host asks over a ``SOCK_SEQPACKET`` socket pair: ``spawn TOKEN`` with the job process's four pipe
ends attached (``SCM_RIGHTS``: arguments in, result out, and its fds 1 and 2 during a job). The zygote
answers ``pid TOKEN PID`` (or ``fail TOKEN REASON``) and, because the job processes are its children,
reports each one's end as ``exit PID WAIT_STATUS``. It exits when the host closes the socket. Nothing
here unpickles anything: messages are ASCII words.

The zygote is a child subreaper (see :mod:`containment`): what a job process started and left behind
when it died is re-parented here, and every child that is not a job process it forked is killed at
once. When it exits, it kills and reaps every child it still has.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable

from dispy_plugins.executor_host import containment, ipc, proctree

MAX_MESSAGE = 256

JOB_FDS = 4

JobProcessMain = Callable[[int, int, int, int], None]
"""Runs in a new job process with its argument pipe's read end, its result pipe's write end and the
write ends of its stdout and stderr pipes; never returns (the caller ``os._exit``\\ s)."""


class ZygoteLink:
    """The host's end: ask for job processes, read what the zygote reports."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, token: str, fds: list[int]) -> None:
        """Ask for a job process on these pipe ends (see :data:`JobProcessMain`; the caller closes its
        copies afterwards)."""
        socket.send_fds(self.sock, [f"spawn {token}".encode("ascii")], fds)

    def receive(self) -> list[list[str]]:
        """Messages waiting, as word lists; the last is ``["gone"]`` once the zygote has exited."""
        out: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return out
            except OSError:
                data = b""
            if not data:
                out.append(["gone"])
                return out
            out.append(data.decode("ascii", "replace").split())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def start(job_process_main: JobProcessMain, inherited: Iterable[int]) -> ZygoteLink:
    """Fork the zygote; ``inherited`` are the host's descriptors, which it closes at once."""
    host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            host_end.close()
            ipc.close_quietly(inherited)
            _serve(zygote_end, job_process_main)
        finally:
            os._exit(0)
    zygote_end.close()
    return ZygoteLink(host_end, pid)


def _serve(sock: socket.socket, job_process_main: JobProcessMain) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the select below
    own = (sock.fileno(), wake_r, wake_w)
    forked: set[int] = set()
    subreaper = containment.become_subreaper()
    try:
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
                _reap(sock, forked)
                if subreaper:
                    containment.kill(containment.strangers(forked))  # a dead job's leftovers
            if sock.fileno() in readable and not _spawn(sock, job_process_main, own, forked):
                return
    except OSError:  # the host is gone (its end closed while we wrote)
        return
    finally:
        _end_children()


def _end_children(timeout: float = containment.END_TIMEOUT) -> None:
    """Kill and reap every child left (the host is done with them); give up after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (kids := containment.children(os.getpid())) and time.monotonic() < deadline:
        containment.kill(kids)
        containment.reap_children()
        time.sleep(0.005)


def _spawn(sock: socket.socket, job_process_main: JobProcessMain, own: tuple[int, ...], forked: set[int]) -> bool:
    """Serve one request; False once the host has closed its end."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, JOB_FDS)
    if not data:
        return False
    words = data.decode("ascii", "replace").split()
    if len(words) != 2 or words[0] != "spawn" or len(fds) != JOB_FDS:
        for fd in fds:
            os.close(fd)
        return True
    token = words[1]
    os.environ[proctree.JOB_ENV] = token  # the job and everything it starts carry it
    try:
        pid = os.fork()
    except OSError as exc:
        sock.send(f"fail {token} {exc.strerror or exc}".encode("ascii", "replace")[:MAX_MESSAGE])
        pid = -1
    if pid != 0:  # here only: the job process keeps it
        os.environ.pop(proctree.JOB_ENV, None)
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            ipc.close_quietly(own)
            job_process_main(*fds)
        finally:
            os._exit(0)
    ipc.close_quietly(fds)
    if pid > 0:
        forked.add(pid)
        sock.send(f"pid {token} {pid}".encode("ascii"))
    return True


def _reap(sock: socket.socket, forked: set[int]) -> None:
    """Reap ended children; report those that were job processes (the rest were a dead job's leftovers)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in forked:
            forked.discard(pid)
            sock.send(f"exit {pid} {status}".encode("ascii"))
