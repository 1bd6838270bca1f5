"""The fork server of a fork-mode host: it forks job processes so that the host does not have to.

A fork costs the forking process its page-table copy and, afterwards, a page fault for the first write
to each of its pages. The host is on every job's path (it passes arguments and results along), so
forking there delays the jobs around each fork. The zygote is forked from the host once, after setup,
so it holds the same namespace. It does nothing but wait and fork, on whichever CPU is free, and it
touches few pages between forks.

The host asks over a ``SOCK_SEQPACKET`` socket pair: ``spawn TOKEN`` with the job process's two pipe
ends attached (``SCM_RIGHTS``). The zygote answers ``pid TOKEN PID`` (or ``fail TOKEN REASON``) and,
because the job processes are its children, reports each one's end as ``exit PID WAIT_STATUS``. It
exits when the host closes the socket. Nothing here unpickles anything: messages are ASCII words.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable, Iterable

from dispy_plugins.executor_host import ipc, proctree

MAX_MESSAGE = 256

JobProcessMain = Callable[[int, int], None]
"""Runs in a new job process with its argument pipe's read end and result pipe's write end; never
returns (the caller ``os._exit``\\ s)."""


class ZygoteLink:
    """The host's end: ask for job processes, read what the zygote reports."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, token: str, r_args: int, w_res: int) -> None:
        """Ask for a job process on these pipe ends (the caller closes its copies afterwards)."""
        socket.send_fds(self.sock, [f"spawn {token}".encode("ascii")], [r_args, w_res])

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
    try:
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
            _reap(sock)
            if sock.fileno() in readable and not _spawn(sock, job_process_main, own):
                return
    except OSError:  # the host is gone (its end closed while we wrote)
        return


def _spawn(sock: socket.socket, job_process_main: JobProcessMain, own: tuple[int, ...]) -> bool:
    """Serve one request; False once the host has closed its end."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
    if not data:
        return False
    words = data.decode("ascii", "replace").split()
    if len(words) != 2 or words[0] != "spawn" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return True
    token = words[1]
    r_args, w_res = fds
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
            job_process_main(r_args, w_res)
        finally:
            os._exit(0)
    os.close(r_args)
    os.close(w_res)
    if pid > 0:
        sock.send(f"pid {token} {pid}".encode("ascii"))
    return True


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(f"exit {pid} {status}".encode("ascii"))
