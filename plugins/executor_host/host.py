"""The per-computation host process: ``python -m dispy_plugins.executor_host.host fork|spawn``.

It owns the computation's namespace (code, depends, setup's globals), starts one process per job,
and multiplexes with one selector: the node's pipe (stdin/stdout of this process, moved off fds 0/1
so that stray prints cannot corrupt the framing), each job's result pipe and each job's exit
(pidfd, or SIGCHLD through a wakeup fd where pidfds do not exist). No threads, no polling.

Setup and cleanup run here too (see :mod:`hostsetup`); job processes come from :mod:`spares`.

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
import heapq
import itertools
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from dispy_core.status import JobStatus
from dispy_plugins.executor_host import containment, hostsetup, ipc, lazylog, proctree
from dispy_plugins.executor_host.capture import OUTPUT_CAP, Captured
from dispy_plugins.executor_host.lazylog import LazyLogger
from dispy_plugins.executor_host.namespace import CompInfo
from dispy_plugins.executor_host.procs import ExitWatch, JobProc, describe_death
from dispy_plugins.executor_host.spares import Spares

logger = LazyLogger("dispynode")

COALESCE_DELAY = 0.002
"""Seconds a "started" notification may wait to share a write with the job's result."""

CANCEL_GRACE = 5.0
"""Seconds a cancelled job has, after its KeyboardInterrupt, to return a value (the original's ~5 s)."""

KILL_AFTER_TERM = 1.0
"""Seconds between SIGTERM and SIGKILL once a cancelled job's grace has run out."""

REPORT_AFTER_KILL = 2.0
"""Seconds after SIGKILL after which a job that still has not exited is reported anyway (CPU freed)."""




class Host:
    """The host's event loop and job bookkeeping; ``mode`` is "fork" or "spawn"."""

    def __init__(self, mode: str, ctl_in: int, ctl_out: int) -> None:
        self.mode = mode
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        self.sel = selectors.DefaultSelector()
        self.exits = ExitWatch(self.sel)
        self.reader = ipc.FrameReader()
        self.jobs: dict[int, JobProc] = {}
        self.waiting: dict[int, bytes | memoryview] = {}
        """Jobs (uid -> arguments) waiting for the job process the zygote is forking, in arrival order."""
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
        self.spares = Spares(self)
        self.jobs_per_process = 1
        self.deferred: dict[int, dict[str, Any]] = {}  # job uid -> its "started" header, not sent yet
        self.outbox: list[Any] = []  # frames for the node from this pass of the loop: one write after it
        self.fds: set[int] = {ctl_in, ctl_out}  # what a forked job must close first
        self.setup_result: int | None = None
        self.shipped: bytes = b""  # setup returned 1 (fork): setup's globals, for jobs to install
        self.held: dict[str, Any] = {}  # ... and the originals, kept aside for cleanup
        self.max_file_size = 0
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
            refill = self.spares.refilling and not self.closing
            if refill and self.spares.zygote is not None:  # asking costs little: the zygote forks, not this loop
                self.spares.refill()
                refill = False
            ready = self.sel.select(0 if refill else timeout)
            if refill and not ready:  # idle: start the next job's process now, not when a job waits for it
                self.spares.refill()
                continue
            for key, _events in ready:
                key.data()
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            self.flush_outbox()
        self.flush_outbox()
        self.spares.close()


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
        hostsetup.set_up(self, header, blobs)

    def _maybe_finish_close(self) -> None:
        if not self.closing or self.jobs or self.waiting or not self.running:
            return
        self.spares.retire_all()
        self.flush_outbox()  # the last results before cleanup, which is the user's code and may take long
        error = hostsetup.clean_up(self)
        self.send({"op": "closed", "error": error}, now=True)
        self.running = False

    # ------------------------------------------------------------------ job processes
    def close_fd(self, fd: int) -> None:
        self.fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def on_own_exit(self, proc: JobProc, status: int) -> None:
        ended_job = proc.uid >= 0 and proc.result is None  # it could not end what its job started
        self.on_exit(proc, status)
        if ended_job:
            self._sweep()

    # ------------------------------------------------------------------ what dead jobs left (subreaper)
    def _known(self) -> set[int]:
        """The children that are no dead job's leftovers: job processes, the zygote, this process's own."""
        known = set(self.own) | self.spares.pids()
        known.update(p.pid for p in self.jobs.values())
        return known

    def note_own(self) -> None:
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
        elif uid in self.jobs or uid in self.waiting:
            reason = "duplicate job id"
        elif self.waiting or self.spares.forking():
            # no idle job process, and the zygote is forking some: the job waits for the next one rather
            # than this process forking (a fork here costs the loop that passes every result along)
            self.waiting[uid] = args
            self.spares.ensure(len(self.waiting))
            return
        self._start(uid, args, reason)

    def spare_ready(self) -> None:
        """A job process joined the spares, or the zygote is gone: start the jobs waiting for one."""
        while self.waiting and (self.spares.idle or not self.spares.forking()):
            uid = next(iter(self.waiting))
            self._start(uid, self.waiting.pop(uid))
        self._maybe_finish_close()

    def _start(self, uid: int, args: bytes | memoryview, reason: str = "") -> None:
        """Hand the job to a job process (or report why it cannot run)."""
        proc = None
        if not reason:
            frame = ipc.encode_parts({"op": "run", "uid": uid}, [args])
            for _attempt in range(2):
                candidate = self.spares.take()
                if candidate is None:
                    break
                try:
                    ipc.write_all(candidate.wfd, frame)
                    proc = candidate
                    break
                except OSError:  # that spare died; its exit handler cleans up; try a fresh one
                    self.close_fd(candidate.wfd)
                    candidate.wfd = -1
            if proc is None:
                reason = "cannot start a job process"
        if proc is None:
            self._report_unstarted(uid, JobStatus.Terminated, reason)
            return
        proc.runs += 1
        if proc.runs >= self.jobs_per_process:  # its last job: the end of its input tells it so too
            self.close_fd(proc.wfd)
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
        self.spares.wanted = self.spares.target

    def _on_pipe(self, proc: JobProc) -> None:
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

    def _close_pipe(self, proc: JobProc) -> None:
        if proc.pipe >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(proc.pipe)
            self.close_fd(proc.pipe)
            proc.pipe = -1

    # ------------------------------------------------------------------ job output (its fds 1 and 2)
    def _on_output(self, proc: JobProc, fd: int, buf: Captured) -> None:
        if fd in (proc.out, proc.err):  # not closed earlier in this same batch of events
            self._read_output(proc, fd, buf, 1 << 16)

    def _read_output(self, proc: JobProc, fd: int, buf: Captured, budget: int) -> None:
        """Read up to ``budget`` bytes of what waits in one of the job's output pipes."""
        while budget > 0:
            try:
                data = os.read(fd, min(budget, 1 << 20))
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close_output(proc, fd)
                return
            budget -= len(data)
            if proc.uid >= 0 and not proc.reported:
                buf.add(data)
            else:  # no job runs (what a job left behind where it could not be ended): nobody's output
                if not self.stray:
                    logger.warning("output written while no job ran is dropped (job process %s)", proc.pid)
                self.stray += len(data)

    def _drain_output(self, proc: JobProc) -> None:
        """Read the job's output pipes dry: its result is in, so all it wrote is there (see :mod:`capture`).

        The bound only matters where a process the job started could not be ended and writes on.
        """
        for fd, buf in ((proc.out, proc.outbuf), (proc.err, proc.errbuf)):
            if fd >= 0:
                self._read_output(proc, fd, buf, 4 * OUTPUT_CAP)

    def close_output(self, proc: JobProc, fd: int | None = None) -> None:
        """Close the job's output pipe ``fd``, or both."""
        for attr in ("out", "err"):
            mine = getattr(proc, attr)
            if mine >= 0 and fd in (None, mine):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(mine)
                self.close_fd(mine)
                setattr(proc, attr, -1)

    def _job_data(self, proc: JobProc, data: bytes) -> None:
        if proc.bad or proc.reported:
            return
        if proc.uid < 0:  # a reused process wrote between jobs (a thread its last job left running)
            proc.bad = "the job process wrote between jobs"
            self.spares.retire(proc)
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
                    self.spares.give_back(proc)
                    if self.waiting:  # a job waiting for the zygote's next process takes this one now
                        self.spare_ready()
                    return
                self._close_pipe(proc)
                self._report(proc)  # at once: the process's own teardown need not delay the result
                self.close_output(proc)
                return
            if op == "prov":
                self.send({"op": "prov", "uid": proc.uid}, blobs[:1])
            elif op == "file":
                relpath = str(header.get("relpath", ""))
                self.send({"op": "file", "uid": proc.uid, "relpath": relpath}, blobs[:1])
            elif op == "shutdown":  # dispynode_shutdown() in a job
                self.send({"op": "shutdown", "uid": proc.uid})

    def on_exit(self, proc: JobProc, status: int) -> None:
        proc.status = status
        if proc.popen is not None:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
        if proc.wfd >= 0:  # first: a dead process is never handed another job (nor recycled below)
            self.close_fd(proc.wfd)
            proc.wfd = -1
        if proc.uid < 0:  # an idle spare died (or was retired)
            if self.spares.forget(proc):
                logger.warning("idle job process %s", proctree.describe_wait_status(status))
            self._close_pipe(proc)
            self.close_output(proc)
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
        self.close_output(proc)

    def _report(self, proc: JobProc) -> None:
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
                exc = proc.bad or describe_death(proc.status or 0, self.limits)
        done: dict[str, Any] = {"op": "done", "uid": proc.uid, "status": int(status), "exc": exc, "t0": t0,
                                "t1": t1}
        started = self.deferred.pop(proc.uid, None)
        if started is not None:  # the node learns both from this one frame
            done["pid"], done["started"] = started["pid"], started["t"]
        exc_object = list(blobs[3:4]) if len(blobs) > 3 and blobs[3] else []  # the job's exception, serialized
        blobs = (list(blobs) + [b"", b"", b""])[:3]
        self.send(done, [blobs[0], proc.outbuf.take(blobs[1]), proc.errbuf.take(blobs[2]), *exc_object])
        self._maybe_finish_close()

    def _cancel(self, uid: int, grace: float) -> None:
        if self.waiting.pop(uid, None) is not None:  # it never started: cancelled at once
            self._report_unstarted(uid, JobStatus.Cancelled, "Cancelled")
            self._maybe_finish_close()
            return
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

    def _escalate(self, proc: JobProc, signum: int) -> None:
        if proc.reported or proc.status is not None:
            return
        proctree.signal_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs), signum)

    def _give_up(self, proc: JobProc) -> None:
        """SIGKILL did not end the job (a process stuck in the kernel): free its CPU anyway."""
        if proc.reported:
            return
        logger.warning("job process %s did not exit after SIGKILL; reporting its job cancelled", proc.pid)
        self._report(proc)

    def _report_unstarted(self, uid: int, status: JobStatus, reason: str) -> None:
        now = time.time()
        self.send({"op": "done", "uid": uid, "status": int(status), "exc": reason, "t0": now, "t1": now},
                  [b"", b"", b""])

    def _kill_all(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for uid in waiting:
            self._report_unstarted(uid, JobStatus.Cancelled, "Cancelled")
        for proc in list(self.jobs.values()):
            if not proc.reported and proc.status is None:
                proc.cancelled = True
                proctree.kill_tree(proc.pid, proctree.job_processes(proc.pid, proc.token, proc.procs))



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
