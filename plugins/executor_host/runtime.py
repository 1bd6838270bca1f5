"""What runs inside one job process: capture output, call the computation, report over the job pipe.

A job writes frames to its own pipe to the host: ``prov`` (a provisional result), ``file`` (a file it
sends) and, last, ``result``. It never returns into the host's loop: the caller ``os._exit``\\ s.
Around each job: its fds 1 and 2 go to the host (:mod:`capture`), its limits are set (:mod:`rlimits`),
and before the result leaves, every process it started is ended (:mod:`containment`).
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import stat
import sys
import time
import traceback
from typing import Any

from dispy_plugins.executor_host import containment, ipc, rlimits
from dispy_plugins.executor_host.capture import FdCapture, StringCapture, capped


class JobChannel:
    """The job's end of its pipe to the host (blocking writes, one frame per write).

    ``max_file_size`` (0 = no limit) is the node's bound for a file a job sends; the node enforces it
    too, the job refuses larger files early, without reading them. ``output``: the pipes to the host
    that become the job's fds 1 and 2 (None: ``print`` only, into the result frame). ``limits``: the
    job limits to set for each job (``reused``: this process may run further jobs).
    """

    __slots__ = ("fd", "serializer", "work_dir", "max_frame", "max_file_size", "output", "limits", "reused")

    def __init__(self, fd: int, serializer: Any, work_dir: str, max_frame: int, max_file_size: int = 0,
                 output: FdCapture | None = None, limits: dict[str, int] | None = None,
                 reused: bool = False) -> None:
        self.fd = fd
        self.serializer = serializer
        self.work_dir = work_dir
        self.max_frame = max_frame or ipc.DEFAULT_MAX_FRAME
        self.max_file_size = max(0, int(max_file_size or 0))
        self.output = output
        self.limits = limits or {}
        self.reused = reused

    def send(self, header: dict[str, Any], blobs: list[bytes]) -> bool:
        """Write one frame; False if it would exceed the frame bound.

        A cancel's KeyboardInterrupt is held back while a large frame is written: a frame cut in half
        would spoil every frame after it, including the value a job returns when it catches the
        interrupt. A pipe write of up to ``PIPE_BUF`` bytes is all or nothing, so small frames (most
        results) skip the two extra system calls and the pages they touch.
        """
        if sum(len(b) for b in blobs) + 1024 > self.max_frame:
            return False
        frame = ipc.encode_parts(header, blobs)
        if _SIGMASK is None or (len(frame) == 1 and len(frame[0]) <= _ATOMIC_WRITE):
            ipc.write_all(self.fd, frame)
            return True
        _SIGMASK(signal.SIG_BLOCK, _HELD)
        try:
            ipc.write_all(self.fd, frame)
        finally:
            _SIGMASK(signal.SIG_UNBLOCK, _HELD)
        return True


_SIGMASK = getattr(signal, "pthread_sigmask", None)
_HELD = {signal.SIGINT}
_ATOMIC_WRITE = getattr(select, "PIPE_BUF", 512)

_channel: JobChannel | None = None


def _complain(what: str, reason: str) -> int:
    """A failed ``dispy_*`` call: one line on the job's stderr (the user sees it in ``job.stderr``)."""
    print(f"{what} failed: {reason}", file=sys.stderr)
    return -1


def dispy_provisional_result(result: Any, relay: bool = False, timeout: float | None = None) -> int:
    """Send an intermediate result to the client; 0 once it is on its way, -1 on failure.

    ``relay`` and ``timeout`` are accepted for compatibility: a job's frames go to the node in order
    over its pipe, so there is nothing to relay and nothing to time out.
    """
    if _channel is None:
        return _complain("dispy_provisional_result", "called outside a job")
    try:
        data = _channel.serializer.dumps(result)
    except Exception as exc:
        return _complain("dispy_provisional_result", f"cannot serialize the result: {exc}")
    if not _channel.send({"op": "prov", "relay": bool(relay)}, [data]):
        return _complain("dispy_provisional_result", f"{len(data)} bytes exceed the frame bound of "
                                                     f"{_channel.max_frame} bytes")
    return 0


def send_file_name(path: str, work_dir: str) -> tuple[str, str]:
    """``(absolute path, name the client gets)`` for a file a job sends.

    A file under the computation's directory keeps its path relative to it ("out/a.dat"), which the
    client recreates under its own working directory. A file anywhere else is sent by its base name
    only: its absolute path means nothing on the client, and must never become a path there.
    """
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))  # relative to the job's cwd, as open() is
    root = os.path.abspath(work_dir)
    if os.path.commonpath([full, root]) == root and full != root:
        return full, os.path.relpath(full, root).replace(os.sep, "/")
    return full, os.path.basename(full)


def dispy_send_file(path: str, relay: bool = False, timeout: float | None = None) -> int:
    """Send a file to the client (see :func:`send_file_name` for the name it gets there).

    0 once the file is on its way to the node, -1 on failure (no such file, not a regular file, larger
    than the node's ``max_file_size`` or the frame bound), with the reason on the job's stderr.
    """
    what = f"dispy_send_file({path!r})"
    if _channel is None:
        return _complain(what, "called outside a job")
    try:
        full, relpath = send_file_name(path, _channel.work_dir)
        info = os.stat(full)  # before open(): a FIFO would block it
        if not stat.S_ISREG(info.st_mode):
            return _complain(what, "not a regular file")
        limit = _channel.max_file_size
        if limit and info.st_size > limit:
            return _complain(what, f"the file has {info.st_size} bytes, above the node's max_file_size of "
                                   f"{limit} bytes")
        if info.st_size + 1024 + len(relpath) > _channel.max_frame:
            return _complain(what, f"the file has {info.st_size} bytes, above the frame bound of "
                                   f"{_channel.max_frame} bytes")
        with open(full, "rb") as fh:
            data = fh.read()
        if limit and len(data) > limit:
            return _complain(what, f"the file grew to {len(data)} bytes, above the node's max_file_size "
                                   f"of {limit} bytes")
    except OSError as exc:
        return _complain(what, f"{exc.strerror or exc}: {exc.filename or path!r}")
    if not relpath:
        return _complain(what, "no file name")
    if not _channel.send({"op": "file", "relpath": relpath, "relay": bool(relay)}, [data]):
        return _complain(what, f"the file grew beyond the frame bound of {_channel.max_frame} bytes")
    return 0


def format_exception(exc: BaseException, skip_frames: int = 1) -> str:
    """The traceback without dispy's own frames (the user sees only their code)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_job(kind: str, fn: Any, program: str, args_blob: bytes, channel: JobChannel,
            ns: dict[str, Any] | None = None) -> None:
    """Run one job and write its ``result`` frame; never raises (the caller exits right after).

    ``ns`` is the computation's namespace, where a job's own depends go (default: ``__main__``'s).
    """
    global _channel
    _channel = channel
    start = time.time()
    capture = channel.output or StringCapture()
    try:
        try:
            capture.begin()
            rlimits.apply(channel.limits, channel.reused)
            if kind == "program":
                header, blobs = _run_program(program, args_blob, channel)
            else:
                header, blobs = _run_function(fn, args_blob, channel, ns)
        except BaseException as exc:  # a failure of dispy's own code: still report it
            header = {"ok": False, "exc": format_exception(exc, 0),
                      "interrupted": isinstance(exc, KeyboardInterrupt)}
            blobs = [_none(channel), b"", b""]
    finally:
        out, err = _end_job(capture, channel)
    blobs = [blobs[0], blobs[1] + out, blobs[2] + err, *blobs[3:4]]  # the exception object, if any
    header["op"] = "result"
    header["t0"] = start
    header["t1"] = time.time()
    try:
        sent = channel.send(header, blobs)
    except KeyboardInterrupt:  # a cancel's interrupt just before or after a small frame's write: write
        sent = channel.send(header, blobs)  # (again); the host reads one result and ignores the rest
    if not sent:
        header.update(ok=False, interrupted=False,
                      exc=f"job result too large: {sum(len(b) for b in blobs)} bytes exceed the frame bound "
                          f"of {channel.max_frame} bytes")
        channel.send(header, [_none(channel), b"", b""])


def _end_job(capture: FdCapture | StringCapture, channel: JobChannel) -> tuple[bytes, bytes]:
    """Restore the job process's output, end every process the job started; what ``print`` captured.

    A cancel's KeyboardInterrupt is held back meanwhile (this must finish whatever happens); one that
    arrives now comes too late to change the job's outcome and is dropped.
    """
    if _SIGMASK is not None:
        _SIGMASK(signal.SIG_BLOCK, _HELD)
    try:
        rlimits.release(channel.limits)
        containment.end_descendants()  # before the pipes are read dry: they wrote what they wrote
        return capture.end()
    finally:
        if _SIGMASK is not None:
            try:
                _SIGMASK(signal.SIG_UNBLOCK, _HELD)
            except KeyboardInterrupt:
                pass


def warm_up(channel: JobChannel) -> None:
    """Walk a job's path once with nothing in it, while this process is still an idle spare.

    A forked process shares its parent's pages until it writes to them; the first write to each costs
    a page fault and a copy. Taking them now, for the objects every job touches (serializer, output
    capture, frame encoding), keeps them out of the next job's latency.
    """
    try:
        out = io.StringIO()
        out.write("")
        capped(out.getvalue().encode())
        args, kwargs = channel.serializer.loads(channel.serializer.dumps(((0,), {})))
        ipc.encode({"op": "result", "ok": True, "interrupted": False, "exc": "", "t0": time.time(),
                    "t1": time.time()}, [channel.serializer.dumps(args), b"", b""])
    except Exception:  # only an optimisation: the job itself will meet any real problem
        pass


def serve_jobs(reader: Any, channel: JobChannel, kind: str, fn: Any, program: str, jobs: int,
               error: str = "", interrupted: bool = False, ns: dict[str, Any] | None = None) -> None:
    """Run up to ``jobs`` jobs, one at a time, as their ``run`` frames arrive; return at end of stream.

    ``jobs`` is the computation's ``jobs_per_process`` (1: a fresh process per job, the original's
    model). Every job after the first starts in the computation's directory again, wherever the one
    before it went; anything else it changed (globals, modules, open files) the next job sees.
    ``error``: this process could not prepare, so every job it is given fails with that reason.
    """
    warm_up(channel)
    for done in range(max(1, jobs)):
        frame = reader.read()
        if frame is None:
            return
        if done:
            with contextlib.suppress(OSError):
                os.chdir(channel.work_dir)
        if error:
            report_failure(channel, error, interrupted)
        else:
            run_job(kind, fn, program, frame[1][0], channel, ns)


def report_failure(channel: JobChannel, reason: str, interrupted: bool = False) -> None:
    """The ``result`` frame of a job that could not even start (its process failed to prepare)."""
    now = time.time()
    channel.send({"op": "result", "ok": False, "interrupted": interrupted, "exc": reason, "t0": now, "t1": now},
                 [_none(channel), b"", b""])


def _none(channel: JobChannel) -> bytes:
    return channel.serializer.dumps(None)


def _run_function(fn: Any, args_blob: bytes, channel: JobChannel,
                  ns: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Call the computation; its output is the caller's (``run_job`` captures it around this)."""
    ok, interrupted, exc_text, result_blob, exc_blob = True, False, "", b"", b""
    own: Any = None
    try:
        try:
            loaded = channel.serializer.loads(args_blob)
            if type(loaded) is tuple and len(loaded) == 4:  # the job brings depends of its own (jobargs)
                own, loaded = _install_own(loaded, channel, ns)
            args, kwargs = loaded
            result = fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            ok, interrupted, exc_text = False, True, format_exception(exc)
        except BaseException as exc:
            ok, exc_text = False, format_exception(exc) + rlimits.explain_exception(exc, channel.limits)
            exc_blob = exception_blob(exc, channel)
        else:
            try:
                result_blob = channel.serializer.dumps(result)
            except Exception as exc:
                ok = False
                kind = type(result).__name__
                exc_text = f"the job's result (a {kind} object) cannot be serialized: {exc}\n"
    finally:
        if own is not None:  # after the result is serialized: it may be an instance of their classes
            own.remove()
    if not ok:
        result_blob = _none(channel)
    blobs = [result_blob, b"", b"", exc_blob] if exc_blob else [result_blob, b"", b""]
    return {"ok": ok, "interrupted": interrupted, "exc": exc_text}, blobs


EXCEPTION_OBJECT_MAX = 65536
"""Bytes a job's serialized exception may have to travel (its traceback text always does)."""


def exception_blob(exc: BaseException, channel: JobChannel) -> bytes:
    """The job's exception serialized, so the client's ``job.future`` can raise the original (b"" if it
    cannot be serialized or is too large: the client then raises a generic error with the text)."""
    try:
        blob = bytes(channel.serializer.dumps(exc))
    except Exception:
        return b""
    return blob if len(blob) <= EXCEPTION_OBJECT_MAX else b""


def _install_own(loaded: tuple[Any, ...], channel: JobChannel, ns: dict[str, Any] | None) -> tuple[Any, Any]:
    """Install a job's own depends (``dispy_job_depends``), then load its arguments: ``(what to remove
    after the job, (args, kwargs))``. Imported here: only such jobs need it."""
    from dispy_core.jobargs import job_depends
    from dispy_plugins.executor_host import jobdepends

    own = job_depends(loaded)
    if own is None:
        return None, loaded
    target = ns if ns is not None else sys.modules["__main__"].__dict__
    try:
        installed = jobdepends.install(own, channel.serializer, target, channel.work_dir)
    except Exception as exc:
        raise RuntimeError(f"cannot install the job's dispy_job_depends: {type(exc).__name__}: {exc}") from exc
    try:
        return installed, channel.serializer.loads(own.inner)
    except BaseException:
        installed.remove()
        raise


def program_command(program: str, work_dir: str, args: list[str]) -> list[str]:
    """How to start a program computation: ``.py`` files with this Python, others directly."""
    path = program if os.path.isabs(program) else os.path.join(work_dir, program)
    if not os.path.exists(path):
        path = program  # a program on PATH
    if path.endswith(".py"):
        return [sys.executable, path, *args]
    return [path, *args]


def _run_program(program: str, args_blob: bytes, channel: JobChannel) -> tuple[dict[str, Any], list[bytes]]:
    """Run a program computation; its exit status is the result.

    With the host's pipes as fds 1 and 2 the program (and whatever it starts) writes straight into
    them, so nothing is buffered here and a daemon it leaves holding them cannot keep the job waiting.
    """
    args, _kwargs = channel.serializer.loads(args_blob)
    cmd = program_command(program, channel.work_dir, [str(a) for a in args])
    import subprocess  # here, not at the top: see lazylog's docstring (threading and fork costs)

    piped = channel.output is None
    stream = subprocess.PIPE if piped else None
    try:
        proc = subprocess.Popen(cmd, cwd=channel.work_dir, stdin=subprocess.DEVNULL, stdout=stream, stderr=stream)
    except OSError as exc:
        return ({"ok": False, "interrupted": False, "exc": f"cannot start program {cmd[0]!r}: {exc}\n"},
                [_none(channel), b"", b""])
    interrupted = False
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:  # cancel: pass the interrupt on, then collect what it wrote
        interrupted = True
        if hasattr(signal, "SIGINT"):
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate()
    blobs = [channel.serializer.dumps(proc.returncode), capped(out or b""), capped(err or b"")]
    if interrupted:
        return {"ok": False, "interrupted": True, "exc": "KeyboardInterrupt\n"}, blobs
    code = proc.returncode
    why = rlimits.explain_signal(-code, channel.limits) if code is not None and code < 0 else ""
    if why:
        return {"ok": False, "interrupted": False, "exc": f"{why} (the program was killed by SIGXCPU)\n"}, blobs
    return {"ok": True, "interrupted": False, "exc": ""}, blobs
