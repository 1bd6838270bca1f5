"""A host's supply of job processes, started ahead of need so that a submit only hands one its arguments.

In fork mode they come from the zygote (see :mod:`zygote`), or are forked by the host itself without
one; in spawn mode each is a fresh interpreter given the computation first (``jobmain``). They are
started in bursts when the host is idle, from ``low`` back up to ``wanted``: every fork write-protects
all of the forking process's pages, so forks back to back pay the faults that follow once per burst.
A process whose job is done and that may run more (``jobs_per_process``) comes back warm, first in line.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import selectors
import signal
import sys
import time
from typing import TYPE_CHECKING

from dispy_plugins.executor_host import containment, ipc, namespace, proctree, runtime
from dispy_plugins.executor_host.capture import FdCapture
from dispy_plugins.executor_host.lazylog import LazyLogger
from dispy_plugins.executor_host.procs import JobProc

if TYPE_CHECKING:
    from dispy_plugins.executor_host.host import Host
    from dispy_plugins.executor_host.zygote import ZygoteLink

logger = LazyLogger("dispynode")

REFILL_BURST = 0.003
"""Seconds a host may spend forking spares back to back before it looks at its pipes again."""


class Spares:
    """The idle job processes of one host, and the ones asked of its zygote."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.idle: list[JobProc] = []
        self.wanted = 0  # set once the computation is ready
        self.target = 0
        self.low = 0  # refill only once this few are left (see refilling)
        self.zygote: ZygoteLink | None = None  # the fork server, in fork mode (see start_zygote)
        self.requested: dict[str, JobProc] = {}  # job processes asked of the zygote, by token
        self.forked: dict[int, JobProc] = {}  # job processes the zygote forked and has not reported gone
        self._seq = itertools.count(1)
        self._bursting = False

    def configure(self, target: int) -> None:
        self.wanted = self.target = target
        self.low = target // 4

    def pids(self) -> set[int]:
        """The processes this supply knows: idle ones, those the zygote forked, the zygote."""
        known = {p.pid for p in self.idle}
        known.update(self.forked)
        if self.zygote is not None:
            known.add(self.zygote.pid)
        return known

    # ------------------------------------------------------------------ handing out
    def forking(self) -> bool:
        """Whether no job process is idle and the zygote is forking some (a job is better off waiting)."""
        return not self.idle and self.zygote is not None and bool(self.requested)

    def ensure(self, count: int) -> None:
        """At least ``count`` job processes asked of the zygote (jobs wait for them)."""
        while self.zygote is not None and len(self.requested) < count:
            self._request()

    def take(self) -> JobProc | None:
        """The next job's process: the warmest idle one, or a new one; None if none can be started."""
        if self.idle:
            return self.idle.pop(0)
        return self.new()

    def give_back(self, proc: JobProc) -> None:
        """A reused process waits for its next job, first in line (its pages are already its own)."""
        self.idle.insert(0, proc)

    def forget(self, proc: JobProc) -> bool:
        """Take an idle process out of the supply (it died, or is retired); whether it was idle."""
        if proc in self.idle:
            self.idle.remove(proc)
            return True
        return False

    # ------------------------------------------------------------------ refilling
    @property
    def refilling(self) -> bool:
        """Whether to start spares at the next idle moment (no event waiting): in bursts, see the module."""
        count = len(self.idle) + len(self.requested)
        if count <= self.low:
            self._bursting = True
        elif count >= self.wanted:
            self._bursting = False
        return self._bursting and count < self.wanted

    def refill(self) -> None:
        """Ask the zygote for what is missing; without one, fork spares back to back for up to
        ``REFILL_BURST`` seconds (at least one), then look at events again: a large host, slow to fork,
        still answers between forks."""
        if self.zygote is not None:
            while self.zygote is not None and len(self.idle) + len(self.requested) < self.wanted:
                self._request()
            return
        deadline = time.monotonic() + REFILL_BURST
        while len(self.idle) < self.wanted:
            spare = self.new()
            if spare is None:
                self.wanted = len(self.idle)  # try again at the next submit
                return
            self.idle.append(spare)
            if time.monotonic() >= deadline:
                return

    def new(self) -> JobProc | None:
        """Start a job process here (fork or spawn); None, logged, if that fails.

        Its marker (``proctree.JOB_ENV``) is put in this process's environment just for the fork or
        spawn: the job inherits it, and so does every program it starts, at no cost to the job.
        """
        token = proctree.job_token(os.getpid(), next(self._seq))
        os.environ[proctree.JOB_ENV] = token
        try:
            proc = self._fork() if self.host.mode == "fork" else self._spawn()
        except OSError as exc:
            logger.warning("cannot start a job process: %s", exc)
            return None
        finally:
            os.environ.pop(proctree.JOB_ENV, None)
        proc.token = token
        return proc

    def _fork(self) -> JobProc:
        host = self.host
        info = host.info
        assert info is not None
        (r_args, w_res, w_out, w_err), (w_args, r_res, r_out, r_err) = _job_pipes()
        pid = os.fork()
        if pid == 0:  # the job process: wait for the job, run it, report, exit; never back into the loop
            try:
                ipc.close_quietly((*host.fds, w_args, r_res, r_out, r_err))
                self.job_main(r_args, w_res, w_out, w_err)
            finally:
                os._exit(0)
        ipc.close_quietly((r_args, w_res, w_out, w_err))
        return self._track(JobProc(pid, r_res, w_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, out=r_out,
                                   err=r_err))

    def _spawn(self) -> JobProc:
        host = self.host
        info = host.info
        assert info is not None
        import subprocess  # spawn mode only: see lazylog's docstring

        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        try:
            popen = subprocess.Popen([sys.executable, "-m", "dispy_plugins.executor_host.jobmain", str(w_out),
                                      str(w_err)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=info.work_dir, start_new_session=True, pass_fds=(w_out, w_err))
        except BaseException:
            ipc.close_quietly((r_out, r_err))
            raise
        finally:
            ipc.close_quietly((w_out, w_err))
        assert popen.stdin is not None and popen.stdout is not None
        wfd, pipe = os.dup(popen.stdin.fileno()), os.dup(popen.stdout.fileno())
        ipc.enlarge_pipe(wfd)
        ipc.enlarge_pipe(pipe)
        popen.stdin.close()
        popen.stdout.close()
        proc = self._track(JobProc(popen.pid, pipe, wfd, info.max_frame or ipc.DEFAULT_MAX_FRAME, popen,
                                   out=r_out, err=r_err))
        try:
            ipc.write_all(wfd, host.spawn_init)
        except OSError:
            pass  # it died at start: its exit is reported like any other
        return proc

    def _track(self, proc: JobProc) -> JobProc:
        """Watch a process this host started itself (the zygote reports those it forks)."""
        host = self.host
        host.fds.update((proc.pipe, proc.wfd, proc.out, proc.err))
        host.exits.watch(proc.pid, lambda status: host.on_own_exit(proc, status))
        return proc

    def job_main(self, r_args: int, w_res: int, w_out: int, w_err: int) -> None:
        """A forked job process (from the host or its zygote), holding only its four pipe ends: prepare, then
        run its job (or ``jobs_per_process`` of them)."""
        host = self.host
        info = host.info
        assert info is not None
        os.setsid()
        containment.become_subreaper()  # what its job starts stays below it, to be ended with the job
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        host.exits.child_reset()
        error, interrupted = "", False
        if host.shipped:  # setup returned 1: this job's own copy of setup's globals
            try:
                namespace.install_setup_globals(host.shipped, host.serializer, host.ns)
            except BaseException as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                error = ("cannot install setup's globals in the job process:\n"
                         f"{runtime.format_exception(exc, 0)}")
        reader = ipc.BlockingReader(r_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, views=True)
        channel = runtime.JobChannel(w_res, host.serializer, info.work_dir, info.max_frame, host.max_file_size,
                                     FdCapture(w_out, w_err), host.limits, host.jobs_per_process > 1)
        comp = info.computation
        runtime.serve_jobs(reader, channel, comp.kind, host.fn, comp.program, host.jobs_per_process, error,
                           interrupted, host.ns)

    # ------------------------------------------------------------------ the zygote (fork mode)
    def start_zygote(self) -> None:
        """Fork the fork server (see :mod:`zygote`); without it, the host forks job processes itself."""
        import socket  # fork mode only

        from dispy_plugins.executor_host import zygote

        if not (hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
            return  # its job processes' exits must be watchable by pidfd should it die
        host = self.host
        inherited = set(host.fds)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            inherited.add(host.sel.fileno())  # type: ignore[attr-defined]
        try:
            link = zygote.start(self.job_main, inherited)
        except OSError as exc:
            logger.warning("no fork server, forking job processes here: %s", exc)
            return
        self.zygote = link
        host.fds.add(link.fileno())
        host.sel.register(link.fileno(), selectors.EVENT_READ, self.on_zygote)

    def _request(self) -> None:
        """Ask the zygote for a job process; it joins the spares when the zygote names its pid."""
        host = self.host
        info, link = host.info, self.zygote
        assert info is not None and link is not None
        token = proctree.job_token(os.getpid(), next(self._seq))
        (r_args, w_res, w_out, w_err), (w_args, r_res, r_out, r_err) = _job_pipes()
        try:
            link.request(token, [r_args, w_res, w_out, w_err])
            sent = True
        except OSError:
            sent = False
        ipc.close_quietly((r_args, w_res, w_out, w_err))  # the zygote has its own copies now
        if not sent:
            ipc.close_quietly((w_args, r_res, r_out, r_err))
            self.zygote_gone()
            return
        proc = JobProc(0, r_res, w_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, out=r_out, err=r_err)
        proc.token = token
        host.fds.update((r_res, w_args, r_out, r_err))
        self.requested[token] = proc

    def on_zygote(self) -> None:
        link = self.zygote
        if link is None:
            return
        host = self.host
        for words in link.receive():
            kind = words[0] if words else ""
            if kind == "pid" and len(words) == 3:
                proc = self.requested.pop(words[1], None)
                if proc is not None:
                    proc.pid = int(words[2])
                    self.forked[proc.pid] = proc
                    if proc.wfd >= 0 and (not host.closing or host.waiting):
                        self.idle.append(proc)
                    else:  # retired while it was being forked: its input is closed, it ends by itself
                        proctree.kill_tree(proc.pid)
            elif kind == "exit" and len(words) == 3:
                proc = self.forked.pop(int(words[1]), None)
                if proc is not None:
                    host.on_exit(proc, int(words[2]))
            elif kind == "fail" and len(words) >= 2:
                proc = self.requested.pop(words[1], None)
                logger.warning("cannot start a job process: %s", " ".join(words[2:]))
                if proc is not None:
                    self._drop(proc)
                self.wanted = len(self.idle)  # try again at the next submit
            elif kind == "gone":
                self.zygote_gone()
                break
        host.spare_ready()

    def zygote_gone(self) -> None:
        """The zygote died: fork here from now on; its job processes' exits come by pidfd (status lost)."""
        link, self.zygote = self.zygote, None
        if link is None:
            return
        host = self.host
        if not host.closing:
            logger.warning("the fork server (pid %s) is gone; forking job processes here", link.pid)
        with contextlib.suppress(KeyError, ValueError):
            host.sel.unregister(link.fileno())
        host.fds.discard(link.fileno())
        link.close()
        for proc in self.requested.values():
            self._drop(proc)
        self.requested.clear()
        forked, self.forked = self.forked, {}
        for pid, proc in forked.items():
            host.exits.watch(pid, functools.partial(host.on_exit, proc))
        if host.waiting:  # what waited for the zygote's job processes gets the host's own
            host.spare_ready()

    def _drop(self, proc: JobProc) -> None:
        """Close the host's ends of a job process that never started."""
        host = self.host
        host.close_fd(proc.pipe)
        proc.pipe = -1
        if proc.wfd >= 0:
            host.close_fd(proc.wfd)
            proc.wfd = -1
        host.close_output(proc)

    # ------------------------------------------------------------------ the end
    def retire(self, spare: JobProc) -> None:
        """End an idle job process (and anything it left running)."""
        self.forget(spare)
        if spare.status is None:
            if spare.wfd >= 0:  # end of its argument stream: it would exit by itself
                self.host.close_fd(spare.wfd)
                spare.wfd = -1
            proctree.kill_tree(spare.pid)

    def retire_all(self) -> None:
        self.wanted = 0
        for spare in list(self.idle):
            self.retire(spare)
        for proc in self.requested.values():  # not forked yet: an input already closed ends them at once
            if proc.wfd >= 0:
                self.host.close_fd(proc.wfd)
                proc.wfd = -1

    def close(self) -> None:
        """The host is done: retire every spare; the zygote exits at the end of its input."""
        self.retire_all()
        if self.zygote is not None:
            self.zygote.close()


def _job_pipes() -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A job process's four pipes: its ends (arguments in, result out, fds 1 and 2), then the host's."""
    r_args, w_args = os.pipe()
    r_res, w_res = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    ipc.enlarge_pipe(w_args)  # a large argument or result passes in one write
    ipc.enlarge_pipe(w_res)
    return (r_args, w_res, w_out, w_err), (w_args, r_res, r_out, r_err)
