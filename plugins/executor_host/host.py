"""The per-computation host process: ``python -m dispy_plugins.executor_host.host fork|spawn``.

It owns the computation's namespace (code, depends, setup's globals), starts one process per job,
and multiplexes with one selector: the node's pipe (stdin/stdout of this process, moved off fds 0/1
so that stray prints cannot corrupt the framing), each job's result pipe and each job's exit
(pidfd, or SIGCHLD through a wakeup fd where pidfds do not exist). No threads, no polling.

Setup runs here, once, in the computation's directory, before any job. Its return value chooses how
jobs see the globals it made (the original's 0/1/2; the node process itself never runs user code):

- **0 and 2**: this process keeps them and, with the fork executor, every job forks from it, so jobs
  see them exactly as setup left them (modules, open files, a large list shared copy-on-write). The
  original's 0 ("a subprocess only if globals are used") and 2 ("always a subprocess") are the same
  here: there always is one.
- **1** ("globals shipped to the node process"): setup's new or replaced globals are serialized here
  (data serializer: standard types, as in the original) and each job process installs its own copy;
  this process puts them aside (``cleanup`` gets them back), so a job sees only what could be
  shipped. Fork jobs install them while still idle spares, so the copy costs no job any latency.
- The spawn executor has no fork: jobs always get setup's globals shipped, whatever the value.

Any other value, an exception or a setup slower than ``setup_timeout`` fails the computation on this
node with the reason (the node side enforces the time limit and kills this process).

A cancelled job gets SIGINT (KeyboardInterrupt) and ``grace`` seconds to end; then its process group
and every process it started (see :mod:`proctree`) get SIGTERM, then SIGKILL. Its ``done`` is sent
exactly once, even if the process cannot be reaped.

A job that ends by itself ends what it started (see :mod:`containment`): the job process does it before
its result leaves; for a job process that died, the zygote does it, or this process for those it
started itself (it is a subreaper too: a child that is neither a job process, the zygote, nor its own
is a dead job's and is killed; see ``_sweep``). Each job process's fds 1 and 2 are pipes read here
(see :mod:`capture`): the job's stdout and stderr come from them, read dry when its result arrives.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dispy_core.joblimits import summary
from dispy_core.status import JobStatus
from dispy_plugins.executor_host import containment, ipc, lazylog, namespace, proctree, rlimits, runtime
from dispy_plugins.executor_host.capture import OUTPUT_CAP, Captured, FdCapture
from dispy_plugins.executor_host.lazylog import LazyLogger
from dispy_plugins.executor_host.namespace import CompInfo

if TYPE_CHECKING:
    from dispy_plugins.executor_host.zygote import ZygoteLink

logger = LazyLogger("dispynode")

COALESCE_DELAY = 0.002
"""Seconds a "started" notification may wait to share a write with the job's result."""

CANCEL_GRACE = 5.0
"""Seconds a cancelled job has, after its KeyboardInterrupt, to return a value (the original's ~5 s)."""

KILL_AFTER_TERM = 1.0
"""Seconds between SIGTERM and SIGKILL once a cancelled job's grace has run out."""

REPORT_AFTER_KILL = 2.0
"""Seconds after SIGKILL after which a job that still has not exited is reported anyway (CPU freed)."""

SETUP_RESULTS = (0, 1, 2)

DEFAULT_SPARES = 8
"""Job processes kept started ahead of need, unless the node says (``executor.<mode>.spares``)."""

REFILL_BURST = 0.003
"""Seconds a host may spend forking spares back to back before it looks at its pipes again."""


class _Proc:
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
        self.jobs: dict[int, _Proc] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._spare_seq = itertools.count(1)
        self.info: CompInfo | None = None
        self.serializer: Any = None
        self.ns: dict[str, Any] = {}
        self.fn: Any = None
        self.closing = False
        self.terminate = False
        self.running = True
        self.spawn_init: bytes = b""
        self.spares: list[_Proc] = []
        self.spares_wanted = 0  # set once the computation is ready
        self.spares_target = 0
        self.spares_low = 0  # refill only once this few are left (see refilling)
        self.jobs_per_process = 1
        self.deferred: dict[int, dict[str, Any]] = {}  # job uid -> its "started" header, not sent yet
        self.outbox: list[Any] = []  # frames for the node from this pass of the loop: one write after it
        self.fds: set[int] = {ctl_in, ctl_out}  # what a forked job must close first
        self.setup_result: int | None = None
        self.shipped: bytes = b""  # setup returned 1 (fork): setup's globals, for jobs to install
        self.held: dict[str, Any] = {}  # ... and the originals, kept aside for cleanup
        self.max_file_size = 0
        self.zygote: ZygoteLink | None = None  # the fork server, in fork mode (see _start_zygote)
        self.requested: dict[str, _Proc] = {}  # job processes asked of the zygote, by token
        self.forked: dict[int, _Proc] = {}  # job processes the zygote forked and has not reported gone
        self.limits: dict[str, int] = {}  # the job limits the node decided (joblimits), set in each job
        self.subreaper = False  # orphans below this process come here (see _sweep)
        self.own: set[int] = set()  # children this process had when setup was done (setup's)
        self.stray = 0  # bytes of output that came while no job ran (dropped)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        os.set_blocking(self.ctl_in, False)
        self.sel.register(self.ctl_in, selectors.EVENT_READ, self._on_ctl)
        while self.running:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            refill = self.refilling and not self.closing
            ready = self.sel.select(0 if refill else timeout)
            if refill and not ready:  # idle: start the next job's process now, not when a job waits for it
                self._refill()
                continue
            for key, _events in ready:
                key.data()
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            self.flush_outbox()
        self.flush_outbox()
        self._retire_spares()
        if self.zygote is not None:
            self.zygote.close()  # it exits at the end of its input

    @property
    def refilling(self) -> bool:
        """Whether to start spares at the next idle moment (no event waiting).

        Spares are started in bursts, from ``spares_low`` back up to ``spares_wanted``: every fork
        write-protects all of this process's pages, so the first write to each page afterwards faults;
        forks back to back pay those faults (and disturb results passing through) once per burst.
        """
        count = len(self.spares) + len(self.requested)
        if count <= self.spares_low:
            self._bursting = True
        elif count >= self.spares_wanted:
            self._bursting = False
        return self._bursting and count < self.spares_wanted

    _bursting = False

    def _refill(self) -> None:
        """Ask the zygote for what is missing; without one, fork spares back to back for up to
        ``REFILL_BURST`` seconds (at least one), then look at events again: a large host, slow to fork,
        still answers between forks."""
        if self.zygote is not None:
            while self.zygote is not None and len(self.spares) + len(self.requested) < self.spares_wanted:
                self._request_spare()
            return
        deadline = time.monotonic() + REFILL_BURST
        while len(self.spares) < self.spares_wanted:
            spare = self._new_spare()
            if spare is None:
                self.spares_wanted = len(self.spares)  # try again at the next submit
                return
            self.spares.append(spare)
            if time.monotonic() >= deadline:
                return

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), fn))

    def send(self, header: dict[str, Any], blobs: list[Any] | None = None, now: bool = False) -> None:
        """Queue a frame for the node, written after this pass of the loop; ``now``: at once (user code that
        may block for long runs next)."""
        parts = ipc.encode_parts(header, blobs or ())
        if self.deferred:  # keep the order: deferred frames go first, in the same write
            parts.insert(0, b"".join(ipc.encode(h) for h in self.deferred.values()))
            self.deferred.clear()
        self.outbox.extend(parts)
        if now:
            self.flush_outbox()

    def flush_outbox(self) -> None:
        """Write what this pass of the loop has for the node (the results of the jobs that ended together):
        one write, one wake-up of the node."""
        if self.outbox:
            parts, self.outbox = self.outbox, []
            ipc.write_all(self.ctl_out, parts)

    def send_started(self, uid: int, pid: int, start: float) -> None:
        """Say a job started within ``COALESCE_DELAY``: a tiny job's "done" then carries it (one frame,
        one node wakeup, instead of two)."""
        self.deferred[uid] = {"op": "started", "uid": uid, "pid": pid, "t": start}
        if len(self.deferred) == 1:
            self._later(COALESCE_DELAY, self._flush_deferred)

    def _flush_deferred(self) -> None:
        if self.deferred:
            frame = b"".join(ipc.encode(h) for h in self.deferred.values())
            self.deferred.clear()
            self.outbox.append(frame)

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
                self._cancel(int(header["uid"]), float(header.get("grace", CANCEL_GRACE)))
            elif op == "close":
                self.closing = True
                if header.get("terminate"):
                    self._kill_all()
                self._maybe_finish_close()
            elif op == "init":
                self._init(header, blobs)

    def _init(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        info = self.info = CompInfo.from_frame(header, blobs)
        comp = info.computation
        self.reader = ipc.FrameReader(info.max_frame or ipc.DEFAULT_MAX_FRAME, views=True)  # args pass through
        namespace.shutdown_request = lambda: self.send({"op": "shutdown"}, now=True)  # dispynode_shutdown() here
        limit = info.extra.get("max_file_size", 0)
        self.max_file_size = limit if type(limit) is int and limit > 0 else 0
        self.jobs_per_process = namespace.jobs_per_process(info)  # before the zygote copies this process
        self.limits = namespace.job_limits(info)
        try:
            os.chdir(info.work_dir)
            self.serializer = namespace.load_serializer(info)
            self.ns = namespace.install_user_main()
            namespace.install_depends(comp, self.serializer, self.ns)
            self.fn = namespace.load_computation(comp, self.serializer, self.ns)
            namespace.inject_globals(info, self.ns, self.fn)
        except BaseException as exc:
            self._setup_failed(f"cannot load computation {comp.name!r}:\n{runtime.format_exception(exc, 0)}")
            return
        init_before = namespace.snapshot(self.ns) if info.extra.get("init_file") else None
        try:
            namespace.run_init_file(info, self.ns)  # dispynode --init: its globals are the base, like depends
        except BaseException as exc:
            self._setup_failed(f"the node's --init file failed:\n{runtime.format_exception(exc)}")
            return
        before = namespace.snapshot(self.ns)
        if comp.setup:
            self.send({"op": "setup_start"}, now=True)
            try:
                setup = namespace.load_callable(comp.setup, self.serializer, self.ns)
                value = namespace.call_with_setup_args(setup, comp, self.serializer)
            except BaseException as exc:
                self._setup_failed(f"setup raised an exception:\n{runtime.format_exception(exc)}")
                return
            finally:
                with contextlib.suppress(OSError):
                    os.chdir(info.work_dir)  # jobs start where setup did, wherever setup went
            if type(value) is not int or value not in SETUP_RESULTS:
                self._setup_failed(f"setup returned {value!r}; expected 0, 1 or 2")
                return
            self.setup_result = value
        if self.mode == "spawn":
            base = before if init_before is None else init_before  # spawned jobs need init's globals too
            changed = namespace.changed_globals(self.ns, base, self.serializer) \
                if comp.setup or init_before is not None else {}
            header_, blobs_ = info.to_frame()
            blobs_.append(self.serializer.dumps(changed) if changed else b"")
            self.spawn_init = ipc.encode(header_, blobs_)
        else:
            if self.setup_result == 1:
                changed = namespace.changed_globals(self.ns, before, self.serializer)
                self.shipped = self.serializer.dumps(changed) if changed else b""
                self.held = namespace.take_globals(self.ns, before)
            containment.prepare()  # jobs make themselves subreapers with it (loaded once, here)
            gc.collect()
            gc.freeze()  # forked jobs then share the host's pages instead of touching them
            if info.extra.get("zygote", True) is not False:
                self._start_zygote()
        del before
        self._note_own()
        self.send({"op": "ready"}, now=True)
        target = info.extra.get("spares", DEFAULT_SPARES)
        self.spares_wanted = self.spares_target = target if type(target) is int and target >= 1 else 1
        self.spares_low = self.spares_target // 4

    def _setup_failed(self, reason: str) -> None:
        logger.warning("computation setup failed: %s", reason.rstrip())
        self.send({"op": "setup_failed", "reason": reason}, now=True)
        self.running = False

    def _maybe_finish_close(self) -> None:
        if not self.closing or self.jobs or not self.running:
            return
        self._retire_spares()
        self.flush_outbox()  # the last results before cleanup, which is the user's code and may take long
        error = ""
        info = self.info
        if info is not None and info.computation.cleanup and self.serializer is not None:
            namespace.put_back_globals(self.ns, self.held)
            self.held = {}
            try:
                os.chdir(info.work_dir)
                cleanup = namespace.load_callable(info.computation.cleanup, self.serializer, self.ns)
                if callable(cleanup):
                    namespace.call_with_setup_args(cleanup, info.computation, self.serializer)
            except BaseException as exc:
                error = f"cleanup raised an exception:\n{runtime.format_exception(exc)}"
                logger.warning("%s", error.rstrip())
        namespace.run_init_close()
        self.send({"op": "closed", "error": error}, now=True)
        self.running = False

    # ------------------------------------------------------------------ job processes
    def _close_fd(self, fd: int) -> None:
        self.fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _new_spare(self) -> _Proc | None:
        """Start the next job's process ahead of need, so a submit only hands it the arguments.

        Its marker (``proctree.JOB_ENV``) is put in this process's environment just for the fork or
        spawn: the job inherits it, and so does every program it starts, at no cost to the job.
        """
        token = proctree.job_token(os.getpid(), next(self._spare_seq))
        os.environ[proctree.JOB_ENV] = token
        try:
            proc = self._fork_spare() if self.mode == "fork" else self._spawn_spare()
        except OSError as exc:
            logger.warning("cannot start a job process: %s", exc)
            return None
        finally:
            os.environ.pop(proctree.JOB_ENV, None)
        proc.token = token
        return proc

    def _fork_spare(self) -> _Proc:
        info = self.info
        assert info is not None
        r_args, w_args = os.pipe()
        r_res, w_res = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        ipc.enlarge_pipe(w_args)
        ipc.enlarge_pipe(w_res)
        pid = os.fork()
        if pid == 0:  # the job process: wait for the job, run it, report, exit; never back into the loop
            try:
                ipc.close_quietly((*self.fds, w_args, r_res, r_out, r_err))
                self._job_process_main(r_args, w_res, w_out, w_err)
            finally:
                os._exit(0)
        ipc.close_quietly((r_args, w_res, w_out, w_err))
        return self._track(_Proc(pid, r_res, w_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, out=r_out, err=r_err))

    def _job_process_main(self, r_args: int, w_res: int, w_out: int, w_err: int) -> None:
        """A forked job process (from this host or its zygote), holding only its four pipe ends."""
        info = self.info
        assert info is not None
        os.setsid()
        containment.become_subreaper()  # what its job starts stays below it, to be ended with the job
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.exits.child_reset()
        error, interrupted = "", False
        if self.shipped:  # setup returned 1: this job's own copy of setup's globals
            try:
                namespace.install_setup_globals(self.shipped, self.serializer, self.ns)
            except BaseException as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                error = ("cannot install setup's globals in the job process:\n"
                         f"{runtime.format_exception(exc, 0)}")
        reader = ipc.BlockingReader(r_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, views=True)
        channel = runtime.JobChannel(w_res, self.serializer, info.work_dir, info.max_frame, self.max_file_size,
                                     FdCapture(w_out, w_err), self.limits, self.jobs_per_process > 1)
        comp = info.computation
        runtime.serve_jobs(reader, channel, comp.kind, self.fn, comp.program, self.jobs_per_process, error,
                           interrupted, self.ns)

    # ------------------------------------------------------------------ the zygote (fork mode)
    def _start_zygote(self) -> None:
        """Fork the fork server (see :mod:`zygote`); without it, this process forks job processes itself."""
        import socket  # fork mode only

        from dispy_plugins.executor_host import zygote

        if not (hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
            return  # its job processes' exits must be watchable by pidfd should it die
        inherited = set(self.fds)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            inherited.add(self.sel.fileno())  # type: ignore[attr-defined]
        try:
            link = zygote.start(self._job_process_main, inherited)
        except OSError as exc:
            logger.warning("no fork server, forking job processes here: %s", exc)
            return
        self.zygote = link
        self.fds.add(link.fileno())
        self.sel.register(link.fileno(), selectors.EVENT_READ, self._on_zygote)

    def _request_spare(self) -> None:
        """Ask the zygote for a job process; it joins the spares when the zygote names its pid."""
        info, link = self.info, self.zygote
        assert info is not None and link is not None
        token = proctree.job_token(os.getpid(), next(self._spare_seq))
        r_args, w_args = os.pipe()
        r_res, w_res = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        ipc.enlarge_pipe(w_args)
        ipc.enlarge_pipe(w_res)
        try:
            link.request(token, [r_args, w_res, w_out, w_err])
            sent = True
        except OSError:
            sent = False
        ipc.close_quietly((r_args, w_res, w_out, w_err))  # the zygote has its own copies now
        if not sent:
            ipc.close_quietly((w_args, r_res, r_out, r_err))
            self._zygote_gone()
            return
        proc = _Proc(0, r_res, w_args, info.max_frame or ipc.DEFAULT_MAX_FRAME, out=r_out, err=r_err)
        proc.token = token
        self.fds.update((r_res, w_args, r_out, r_err))
        self.requested[token] = proc

    def _on_zygote(self) -> None:
        link = self.zygote
        if link is None:
            return
        for words in link.receive():
            kind = words[0] if words else ""
            if kind == "pid" and len(words) == 3:
                proc = self.requested.pop(words[1], None)
                if proc is not None:
                    proc.pid = int(words[2])
                    self.forked[proc.pid] = proc
                    if proc.wfd >= 0 and not self.closing:
                        self.spares.append(proc)
                    else:  # retired while it was being forked: its input is closed, it ends by itself
                        proctree.kill_tree(proc.pid)
            elif kind == "exit" and len(words) == 3:
                proc = self.forked.pop(int(words[1]), None)
                if proc is not None:
                    self._on_exit(proc, int(words[2]))
            elif kind == "fail" and len(words) >= 2:
                proc = self.requested.pop(words[1], None)
                logger.warning("cannot start a job process: %s", " ".join(words[2:]))
                if proc is not None:
                    self._drop(proc)
                self.spares_wanted = len(self.spares)  # try again at the next submit
            elif kind == "gone":
                self._zygote_gone()
                return

    def _zygote_gone(self) -> None:
        """The zygote died: fork here from now on; its job processes' exits come by pidfd (status lost)."""
        link, self.zygote = self.zygote, None
        if link is None:
            return
        if not self.closing:
            logger.warning("the fork server (pid %s) is gone; forking job processes here", link.pid)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(link.fileno())
        self.fds.discard(link.fileno())
        link.close()
        for proc in self.requested.values():
            self._drop(proc)
        self.requested.clear()
        forked, self.forked = self.forked, {}
        for pid, proc in forked.items():
            self.exits.watch(pid, functools.partial(self._on_exit, proc))

    def _drop(self, proc: _Proc) -> None:
        """Close the host's ends of a job process that never started."""
        self._close_fd(proc.pipe)
        proc.pipe = -1
        if proc.wfd >= 0:
            self._close_fd(proc.wfd)
            proc.wfd = -1
        self._close_output(proc)

    def _spawn_spare(self) -> _Proc:
        info = self.info
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
        proc = self._track(_Proc(popen.pid, pipe, wfd, info.max_frame or ipc.DEFAULT_MAX_FRAME, popen,
                                 out=r_out, err=r_err))
        try:
            ipc.write_all(wfd, self.spawn_init)
        except OSError:
            pass  # it died at start: its exit is reported like any other
        return proc

    def _track(self, proc: _Proc) -> _Proc:
        """Watch a process this host started itself (the zygote reports those it forks)."""
        self.fds.update((proc.pipe, proc.wfd, proc.out, proc.err))
        self.exits.watch(proc.pid, lambda status: self._on_own_exit(proc, status))
        return proc

    def _on_own_exit(self, proc: _Proc, status: int) -> None:
        ended_job = proc.uid >= 0 and proc.result is None  # it could not end what its job started
        self._on_exit(proc, status)
        if ended_job:
            self._sweep()

    # ------------------------------------------------------------------ what dead jobs left (subreaper)
    def _known(self) -> set[int]:
        """The children that are no dead job's leftovers: job processes, the zygote, this process's own."""
        known = set(self.own)
        known.update(p.pid for p in self.jobs.values())
        known.update(p.pid for p in self.spares)
        known.update(self.forked)
        if self.zygote is not None:
            known.add(self.zygote.pid)
        return known

    def _note_own(self) -> None:
        """Setup is done and no job process exists yet: every child now is this process's own."""
        if self.subreaper:
            self.own = set(containment.children(os.getpid())) - self._known()

    def _sweep(self) -> None:
        """Kill the leftovers of dead jobs (their children re-parent here as they die: again then).

        A child that is no job process is a job's unless it was here when setup was done or is in this
        process's session: every job process starts a session of its own, and nothing can join another
        session, so what a job started is never in this one (what setup's threads start later is).
        """
        if not self.subreaper:
            return
        session = os.getsid(0)
        for pid in containment.strangers(self._known()):
            try:
                if os.getsid(pid) == session:
                    continue
            except OSError:  # gone (and reaped by whoever watched it)
                continue
            containment.kill([pid])
            self.exits.watch(pid, lambda status: self._sweep())

    def _submit(self, uid: int, args: bytes | memoryview) -> None:
        reason = ""
        if self.info is None:
            reason = "computation not set up"
        elif self.closing:
            reason = "computation is closing"
        elif uid in self.jobs:
            reason = "duplicate job id"
        proc = None
        if not reason:
            frame = ipc.encode_parts({"op": "run", "uid": uid}, [args])
            for _attempt in range(2):
                candidate = self.spares.pop(0) if self.spares else None
                if candidate is None:
                    candidate = self._new_spare()
                if candidate is None:
                    break
                try:
                    ipc.write_all(candidate.wfd, frame)
                    proc = candidate
                    break
                except OSError:  # that spare died; its exit handler cleans up; try a fresh one
                    self._close_fd(candidate.wfd)
                    candidate.wfd = -1
            if proc is None:
                reason = "cannot start a job process"
        if proc is None:
            now = time.time()
            self.send({"op": "done", "uid": uid, "status": int(JobStatus.Terminated), "exc": reason,
                       "t0": now, "t1": now}, [b"", b"", b""])
            return
        proc.runs += 1
        if proc.runs >= self.jobs_per_process:  # its last job: the end of its input tells it so too
            self._close_fd(proc.wfd)
            proc.wfd = -1
        proc.uid = uid
        proc.start = time.time()
        self.jobs[uid] = proc
        if proc.runs == 1:
            os.set_blocking(proc.pipe, False)
            self.sel.register(proc.pipe, selectors.EVENT_READ, lambda: self._on_pipe(proc))
            for fd, buf in ((proc.out, proc.outbuf), (proc.err, proc.errbuf)):
                if fd >= 0:
                    os.set_blocking(fd, False)
                    self.sel.register(fd, selectors.EVENT_READ, functools.partial(self._on_output, proc, fd, buf))
        self.send_started(uid, proc.pid, proc.start)
        self.spares_wanted = self.spares_target

    def _on_pipe(self, proc: _Proc) -> None:
        if proc.pipe < 0:  # closed earlier in this same batch of events
            return
        try:
            data = os.read(proc.pipe, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(proc)
            return
        self._job_data(proc, data)

    def _close_pipe(self, proc: _Proc) -> None:
        if proc.pipe >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(proc.pipe)
            self._close_fd(proc.pipe)
            proc.pipe = -1

    # ------------------------------------------------------------------ job output (its fds 1 and 2)
    def _on_output(self, proc: _Proc, fd: int, buf: Captured) -> None:
        if fd in (proc.out, proc.err):  # not closed earlier in this same batch of events
            self._read_output(proc, fd, buf, 1 << 16)

    def _read_output(self, proc: _Proc, fd: int, buf: Captured, budget: int) -> None:
        """Read up to ``budget`` bytes of what waits in one of the job's output pipes."""
        while budget > 0:
            try:
                data = os.read(fd, min(budget, 1 << 20))
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_output(proc, fd)
                return
            budget -= len(data)
            if proc.uid >= 0 and not proc.reported:
                buf.add(data)
            else:  # no job runs (what a job left behind where it could not be ended): nobody's output
                if not self.stray:
                    logger.warning("output written while no job ran is dropped (job process %s)", proc.pid)
                self.stray += len(data)

    def _drain_output(self, proc: _Proc) -> None:
        """Read the job's output pipes dry: its result is in, so all it wrote is there (see :mod:`capture`).

        The bound only matters where a process the job started could not be ended and writes on.
        """
        for fd, buf in ((proc.out, proc.outbuf), (proc.err, proc.errbuf)):
            if fd >= 0:
                self._read_output(proc, fd, buf, 4 * OUTPUT_CAP)

    def _close_output(self, proc: _Proc, fd: int | None = None) -> None:
        """Close the job's output pipe ``fd``, or both."""
        for attr in ("out", "err"):
            mine = getattr(proc, attr)
            if mine >= 0 and fd in (None, mine):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(mine)
                self._close_fd(mine)
                setattr(proc, attr, -1)

    def _job_data(self, proc: _Proc, data: bytes) -> None:
        if proc.bad or proc.reported:
            return
        if proc.uid < 0:  # a reused process wrote between jobs (a thread its last job left running)
            proc.bad = "the job process wrote between jobs"
            self._retire(proc)
            return
        try:
            frames = proc.reader.feed(data)
        except ipc.IPCError as exc:
            proc.bad = f"the job process sent malformed data: {exc}"
            proctree.signal_group(proc.pid, signal.SIGKILL)
            return
        for header, blobs in frames:
            op = header.get("op")
            if op == "result":
                proc.result = (header, blobs)
                if proc.wfd >= 0 and not proc.cancelled:  # jobs_per_process: it waits for the next job
                    self._report(proc)
                    proc.recycle()
                    self.spares.insert(0, proc)  # warm: its pages are already its own
                    return
                self._close_pipe(proc)
                self._report(proc)  # at once: the process's own teardown need not delay the result
                self._close_output(proc)
                return
            if op == "prov":
                self.send({"op": "prov", "uid": proc.uid}, blobs[:1])
            elif op == "file":
                relpath = str(header.get("relpath", ""))
                self.send({"op": "file", "uid": proc.uid, "relpath": relpath}, blobs[:1])
            elif op == "shutdown":  # dispynode_shutdown() in a job
                self.send({"op": "shutdown", "uid": proc.uid})

    def _on_exit(self, proc: _Proc, status: int) -> None:
        proc.status = status
        if proc.popen is not None:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
        if proc.wfd >= 0:  # first: a dead process is never handed another job (nor recycled below)
            self._close_fd(proc.wfd)
            proc.wfd = -1
        if proc.uid < 0:  # an idle spare died (or was retired)
            if proc in self.spares:
                self.spares.remove(proc)
                logger.warning("idle job process %s", proctree.describe_wait_status(status))
            self._close_pipe(proc)
            self._close_output(proc)
            return
        if proc.pipe >= 0 and proc.pipe in self.fds:  # what it wrote is in the pipe; a grandchild may hold it
            try:
                while proc.pipe >= 0:
                    data = os.read(proc.pipe, 1 << 20)
                    if not data:
                        break
                    self._job_data(proc, data)
            except BlockingIOError:
                pass
            self._close_pipe(proc)
        self._report(proc)
        self._close_output(proc)

    def _report(self, proc: _Proc) -> None:
        if proc.reported:
            return
        self._drain_output(proc)
        proc.reported = True
        self.jobs.pop(proc.uid, None)
        if proc.cancelled:  # what the job started dies with it, even when it returned a value
            proctree.kill_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs))
        elif proc.result is None:  # it died before reporting, so it could not end what it started
            # what was re-parented to the zygote or here is killed there (_sweep); without subreapers,
            # look for them by their marker
            scan = not self.subreaper
            proctree.kill_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs) if scan else [])
        now = time.time()
        blobs = [b"", b"", b""]
        if proc.result is not None and not proc.bad:
            header, blobs = proc.result
            ok, exc = bool(header.get("ok")), str(header.get("exc", ""))
            if ok:
                status = JobStatus.Finished
            elif proc.cancelled and header.get("interrupted"):
                status = JobStatus.Cancelled
            else:
                status = JobStatus.Terminated
            t0, t1 = float(header.get("t0", proc.start)), float(header.get("t1", now))
        else:
            t0, t1 = proc.start, now
            if proc.cancelled:
                status, exc = JobStatus.Cancelled, "Cancelled"
            else:
                status = JobStatus.Terminated
                exc = proc.bad or self._death(proc.status or 0)
        done: dict[str, Any] = {"op": "done", "uid": proc.uid, "status": int(status), "exc": exc, "t0": t0,
                                "t1": t1}
        started = self.deferred.pop(proc.uid, None)
        if started is not None:  # the node learns both from this one frame
            done["pid"], done["started"] = started["pid"], started["t"]
        exc_object = list(blobs[3:4]) if len(blobs) > 3 and blobs[3] else []  # the job's exception, serialized
        blobs = (list(blobs) + [b"", b"", b""])[:3]
        self.send(done, [blobs[0], proc.outbuf.take(blobs[1]), proc.errbuf.take(blobs[2]), *exc_object])
        self._maybe_finish_close()

    def _death(self, status: int) -> str:
        """How a job process ended without a result, with the limit that explains it (if any)."""
        text = f"job process {proctree.describe_wait_status(status)}"
        if os.WIFSIGNALED(status):
            why = rlimits.explain_signal(os.WTERMSIG(status), self.limits)
            if why:
                return f"{why} ({text})"
        return f"{text} (the job's limits: {summary(self.limits)})" if self.limits else text

    def _cancel(self, uid: int, grace: float) -> None:
        proc = self.jobs.get(uid)
        if proc is None or proc.reported or proc.cancelled:
            return
        proc.cancelled = True
        proctree.job_processes(proc.pid, proc.token, proc.procs)  # before anything moves or exits
        proctree.signal_process(proc.pid, signal.SIGINT)
        grace = max(0.0, grace)
        self._later(grace, lambda: self._escalate(proc, signal.SIGTERM))
        self._later(grace + KILL_AFTER_TERM, lambda: self._escalate(proc, signal.SIGKILL))
        self._later(grace + KILL_AFTER_TERM + REPORT_AFTER_KILL, lambda: self._give_up(proc))

    def _escalate(self, proc: _Proc, signum: int) -> None:
        if proc.reported or proc.status is not None:
            return
        proctree.signal_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs), signum)

    def _give_up(self, proc: _Proc) -> None:
        """SIGKILL did not end the job (a process stuck in the kernel): free its CPU anyway."""
        if proc.reported:
            return
        logger.warning("job process %s did not exit after SIGKILL; reporting its job cancelled", proc.pid)
        self._report(proc)

    def _kill_all(self) -> None:
        for proc in list(self.jobs.values()):
            if not proc.reported and proc.status is None:
                proc.cancelled = True
                proctree.kill_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs))

    def _retire(self, spare: _Proc) -> None:
        """End an idle job process (and anything it left running)."""
        if spare in self.spares:
            self.spares.remove(spare)
        if spare.status is None:
            if spare.wfd >= 0:  # end of its argument stream: it would exit by itself
                self._close_fd(spare.wfd)
                spare.wfd = -1
            proctree.kill_tree(spare.pid)

    def _retire_spares(self) -> None:
        self.spares_wanted = 0
        for spare in list(self.spares):
            self._retire(spare)
        for proc in self.requested.values():  # not forked yet: an input already closed ends them at once
            if proc.wfd >= 0:
                self._close_fd(proc.wfd)
                proc.wfd = -1


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
    lazylog.mark_host()
    lazylog.keep_log_fd()
    host = Host(mode, ctl_in, ctl_out)
    host.subreaper = containment.become_subreaper()
    host.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
