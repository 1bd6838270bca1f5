"""The per-computation host process: ``python -m dispy_core.execution.host fork|spawn``.

It owns the computation's namespace (code, depends, setup's globals), starts one process per job,
and multiplexes with one selector: the node's pipe (stdin/stdout of this process, moved off fds 0/1
so that stray prints cannot corrupt the framing), each job's result pipe and each job's exit
(pidfd, or SIGCHLD through a wakeup fd where pidfds do not exist). No threads, no polling.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from dispy_core.execution import ipc, namespace, proctree, runtime
from dispy_core.execution.namespace import CompInfo
from dispy_core.status import JobStatus

logger = logging.getLogger("dispynode")

KILL_AFTER_TERM = 1.0
"""Seconds between SIGTERM and SIGKILL once a cancelled job's grace has run out."""


class _Job:
    __slots__ = ("uid", "pid", "pipe", "reader", "result", "cancelled", "status", "start", "procs",
                 "popen", "bad")

    def __init__(self, uid: int, pid: int, pipe: int, max_frame: int, popen: Any = None) -> None:
        self.uid = uid
        self.pid = pid
        self.pipe = pipe
        self.reader = ipc.FrameReader(max_frame)
        self.result: ipc.Frame | None = None
        self.cancelled = False
        self.status: int | None = None  # wait status once reaped
        self.start = time.time()
        self.procs: list[Any] = []
        self.popen = popen
        self.bad = ""


class _ExitWatch:
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


class Host:
    """The host's event loop and job bookkeeping; ``mode`` is "fork" or "spawn"."""

    def __init__(self, mode: str, ctl_in: int, ctl_out: int) -> None:
        self.mode = mode
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        self.sel = selectors.DefaultSelector()
        self.exits = _ExitWatch(self.sel)
        self.reader = ipc.FrameReader()
        self.jobs: dict[int, _Job] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.info: CompInfo | None = None
        self.serializer: Any = None
        self.ns: dict[str, Any] = {}
        self.fn: Any = None
        self.closing = False
        self.terminate = False
        self.running = True
        self.spawn_init: bytes = b""
        self.spare: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        os.set_blocking(self.ctl_in, False)
        self.sel.register(self.ctl_in, selectors.EVENT_READ, self._on_ctl)
        while self.running:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, _events in self.sel.select(timeout):
                key.data()
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
        self._stop_spare()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), fn))

    def send(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> None:
        ipc.write_all(self.ctl_out, ipc.encode(header, blobs or ()))

    # ------------------------------------------------------------------ node side
    def _on_ctl(self) -> None:
        try:
            data = os.read(self.ctl_in, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # the node is gone: nobody wants results any more
            logger.warning("node closed the control pipe; stopping jobs and exiting")
            self._kill_all()
            self.running = False
            return
        for header, blobs in self.reader.feed(data):
            op = header["op"]
            if op == "submit":
                self._submit(int(header["uid"]), blobs[0])
            elif op == "cancel":
                self._cancel(int(header["uid"]), float(header.get("grace", 5.0)))
            elif op == "close":
                self.closing = True
                if header.get("terminate"):
                    self._kill_all()
                self._maybe_finish_close()
            elif op == "init":
                self._init(header, blobs)

    def _init(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        from dispy_core.pluginmanager import load_serializer

        info = self.info = CompInfo.from_frame(header, blobs)
        self.reader = ipc.FrameReader(info.max_frame or ipc.DEFAULT_MAX_FRAME)
        try:
            self.serializer = load_serializer(info.serializer)
            self.ns = namespace.install_user_main()
            namespace.install_depends(info, self.serializer, self.ns)
            self.fn = namespace.load_computation(info, self.serializer, self.ns)
            namespace.inject_globals(info, self.ns, self.fn)
        except BaseException as exc:
            self._setup_failed(f"cannot load computation {info.name!r}:\n{runtime.format_exception(exc, 0)}")
            return
        before = namespace.snapshot(self.ns)
        if info.setup:
            self.send({"op": "setup_start"})
            try:
                setup = namespace.load_callable(info.setup, self.serializer, self.ns)
                value = namespace.call_with_setup_args(setup, info, self.serializer)
            except BaseException as exc:
                self._setup_failed(f"setup raised an exception:\n{runtime.format_exception(exc)}")
                return
            if type(value) is not int or value not in (0, 1, 2):
                self._setup_failed(f"setup returned {value!r}; it must return 0, 1 or 2")
                return
        if self.mode == "spawn":
            changed = namespace.changed_globals(self.ns, before, self.serializer) if info.setup else {}
            header_, blobs_ = info.to_frame()
            blobs_.append(self.serializer.dumps(changed) if changed else b"")
            self.spawn_init = ipc.encode(header_, blobs_)
            self._start_spare()
        else:
            gc.collect()
            gc.freeze()  # forked jobs then share the host's pages instead of touching them
        self.send({"op": "ready"})

    def _setup_failed(self, reason: str) -> None:
        logger.warning("computation setup failed: %s", reason.rstrip())
        self.send({"op": "setup_failed", "reason": reason})
        self.running = False

    def _maybe_finish_close(self) -> None:
        if not self.closing or self.jobs or not self.running:
            return
        error = ""
        info = self.info
        if info is not None and info.cleanup and self.serializer is not None:
            try:
                cleanup = namespace.load_callable(info.cleanup, self.serializer, self.ns)
                if callable(cleanup):
                    namespace.call_with_setup_args(cleanup, info, self.serializer)
            except BaseException as exc:
                error = f"cleanup raised an exception:\n{runtime.format_exception(exc)}"
                logger.warning("%s", error.rstrip())
        self.send({"op": "closed", "error": error})
        self.running = False

    # ------------------------------------------------------------------ jobs
    def _submit(self, uid: int, args: bytes) -> None:
        info = self.info
        if info is None or self.closing or uid in self.jobs:
            reason = "computation not set up" if info is None else (
                "computation is closing" if self.closing else "duplicate job id")
            self.send({"op": "done", "uid": uid, "status": int(JobStatus.Terminated), "exc": reason,
                       "t0": time.time(), "t1": time.time()}, [b"", b"", b""])
            return
        job = self._fork(uid, args) if self.mode == "fork" else self._spawn(uid, args)
        if job is None:
            return
        self.jobs[uid] = job
        os.set_blocking(job.pipe, False)
        self.sel.register(job.pipe, selectors.EVENT_READ, lambda: self._on_pipe(job))
        self.exits.watch(job.pid, lambda status: self._on_exit(job, status))
        self.send({"op": "started", "uid": uid, "pid": job.pid, "t": job.start})

    def _fork(self, uid: int, args: bytes) -> _Job | None:
        info = self.info
        assert info is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the job process: run, report, exit; never back into this loop
            try:
                os.close(r)
                os.setsid()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self.exits.child_reset()
                os.close(self.ctl_in)
                os.close(self.ctl_out)
                runtime.run_job(info.kind, self.fn, info.program, args,
                                runtime.JobChannel(w, self.serializer, info.work_dir, info.max_frame))
            finally:
                os._exit(0)
        os.close(w)
        return _Job(uid, pid, r, info.max_frame or ipc.DEFAULT_MAX_FRAME)

    def _on_pipe(self, job: _Job) -> None:
        if job.pipe < 0:  # closed by its exit handler earlier in this same batch of events
            return
        try:
            data = os.read(job.pipe, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(job.pipe)
            os.close(job.pipe)
            job.pipe = -1
            self._maybe_done(job)
            return
        self._job_data(job, data)

    def _job_data(self, job: _Job, data: bytes) -> None:
        if job.bad:
            return
        try:
            frames = job.reader.feed(data)
        except ipc.IPCError as exc:
            job.bad = f"the job process sent malformed data: {exc}"
            proctree.signal_group(job.pid, signal.SIGKILL)
            return
        for header, blobs in frames:
            op = header.get("op")
            if op == "result":
                job.result = (header, blobs)
            elif op == "prov":
                self.send({"op": "prov", "uid": job.uid}, blobs[:1])
            elif op == "file":
                relpath = str(header.get("relpath", ""))
                self.send({"op": "file", "uid": job.uid, "relpath": relpath}, blobs[:1])

    def _on_exit(self, job: _Job, status: int) -> None:
        job.status = status
        if job.popen is not None:
            job.popen.returncode = os.waitstatus_to_exitcode(status)
        if job.pipe >= 0:  # everything it wrote is in the pipe now; take it (a grandchild may hold it open)
            try:
                while True:
                    data = os.read(job.pipe, 1 << 20)
                    if not data:
                        break
                    self._job_data(job, data)
            except BlockingIOError:
                pass
            self.sel.unregister(job.pipe)
            os.close(job.pipe)
            job.pipe = -1
        self._maybe_done(job)

    def _maybe_done(self, job: _Job) -> None:
        if job.status is None or job.pipe >= 0 or self.jobs.get(job.uid) is not job:
            return
        del self.jobs[job.uid]
        if job.cancelled:
            proctree.kill_tree(job.pid, job.procs)
        now = time.time()
        blobs = [b"", b"", b""]
        if job.result is not None and not job.bad:
            header, blobs = job.result
            ok, exc = bool(header.get("ok")), str(header.get("exc", ""))
            if ok:
                status = JobStatus.Finished
            elif job.cancelled and header.get("interrupted"):
                status = JobStatus.Cancelled
            else:
                status = JobStatus.Terminated
            t0, t1 = float(header.get("t0", job.start)), float(header.get("t1", now))
        else:
            t0, t1 = job.start, now
            if job.cancelled:
                status, exc = JobStatus.Cancelled, "Cancelled"
            else:
                status = JobStatus.Terminated
                exc = job.bad or f"job process {proctree.describe_wait_status(job.status)}"
        self.send({"op": "done", "uid": job.uid, "status": int(status), "exc": exc, "t0": t0, "t1": t1},
                  (blobs + [b"", b"", b""])[:3])
        self._maybe_finish_close()

    def _cancel(self, uid: int, grace: float) -> None:
        job = self.jobs.get(uid)
        if job is None or job.status is not None:
            return
        if not job.cancelled:
            job.cancelled = True
            job.procs = proctree.descendants(job.pid)
            proctree.signal_process(job.pid, signal.SIGINT)
        self._later(max(0.0, grace), lambda: self._escalate(job, signal.SIGTERM))
        self._later(max(0.0, grace) + KILL_AFTER_TERM, lambda: self._escalate(job, signal.SIGKILL))

    def _escalate(self, job: _Job, signum: int) -> None:
        if self.jobs.get(job.uid) is not job or job.status is not None:
            return
        job.procs.extend(p for p in proctree.descendants(job.pid) if p not in job.procs)
        if signum == signal.SIGKILL:
            proctree.kill_tree(job.pid, job.procs)
        else:
            proctree.signal_group(job.pid, signum)

    def _kill_all(self) -> None:
        for job in list(self.jobs.values()):
            if job.status is None:
                job.cancelled = True
                job.procs = proctree.descendants(job.pid)
                proctree.kill_tree(job.pid, job.procs)

    # ------------------------------------------------------------------ spawn mode
    def _start_spare(self) -> None:
        info = self.info
        assert info is not None
        try:
            popen = subprocess.Popen([sys.executable, "-m", "dispy_core.execution.jobmain"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=info.work_dir,
                                     start_new_session=True)
        except OSError as exc:
            logger.warning("cannot start a job interpreter: %s", exc)
            self.spare = None
            return
        assert popen.stdin is not None
        try:
            popen.stdin.write(self.spawn_init)
            popen.stdin.flush()
        except OSError:
            pass  # it died at start; noticed when it is used
        self.spare = popen
        self.exits.watch(popen.pid, lambda status: self._on_spare_exit(popen, status))

    def _on_spare_exit(self, popen: subprocess.Popen[bytes], status: int) -> None:
        popen.returncode = os.waitstatus_to_exitcode(status)
        logger.warning("idle job interpreter %s", proctree.describe_wait_status(status))
        if self.spare is popen:
            self.spare = None
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()

    def _spawn(self, uid: int, args: bytes) -> _Job | None:
        info = self.info
        assert info is not None
        for _attempt in range(2):
            popen = self.spare
            self.spare = None
            if popen is None:
                self._start_spare()
                popen, self.spare = self.spare, None
                if popen is None:
                    break
            assert popen.stdin is not None and popen.stdout is not None
            try:
                popen.stdin.write(ipc.encode({"op": "run", "uid": uid}, [args]))
                popen.stdin.close()
            except OSError:
                continue  # that interpreter is gone (its exit callback cleans up)
            fd = os.dup(popen.stdout.fileno())  # the job's result pipe, owned by the loop from now on
            popen.stdout.close()
            job = _Job(uid, popen.pid, fd, info.max_frame or ipc.DEFAULT_MAX_FRAME, popen)
            self._start_spare()
            return job
        now = time.time()
        self.send({"op": "done", "uid": uid, "status": int(JobStatus.Terminated),
                   "exc": "cannot start a job interpreter", "t0": now, "t1": now}, [b"", b"", b""])
        return None

    def _stop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            proctree.kill_tree(spare.pid)
            try:
                spare.wait(5)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode = argv[0] if argv else "fork"
    if mode not in ("fork", "spawn"):
        print(f"unknown host mode {mode!r}", file=sys.stderr)
        return 2
    # The node talks over fds 0/1; move them away so user prints go to stderr, not into the framing.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    os.set_blocking(ctl_out, True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"dispynode[host {os.getpid()}] %(levelname)s %(message)s")
    host = Host(mode, ctl_in, ctl_out)
    host.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
