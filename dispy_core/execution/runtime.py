"""What runs inside one job process: capture output, call the computation, report over the job pipe.

A job writes frames to its own pipe to the host: ``prov`` (a provisional result), ``file`` (a file it
sends) and, last, ``result``. It never returns into the host's loop: the caller ``os._exit``\\ s.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import traceback
from typing import Any

from dispy_core.execution import ipc
from dispy_core.execution.lazylog import LazyLogger

logger = LazyLogger("dispynode")

OUTPUT_CAP = 16 * 1024 * 1024
"""stdout/stderr beyond this many bytes are cut (a note says so) to keep the result frame bounded."""


class JobChannel:
    """The job's end of its pipe to the host (blocking writes, one frame per write)."""

    __slots__ = ("fd", "serializer", "work_dir", "max_frame")

    def __init__(self, fd: int, serializer: Any, work_dir: str, max_frame: int) -> None:
        self.fd = fd
        self.serializer = serializer
        self.work_dir = work_dir
        self.max_frame = max_frame or ipc.DEFAULT_MAX_FRAME

    def send(self, header: dict[str, Any], blobs: list[bytes]) -> bool:
        if sum(len(b) for b in blobs) + 1024 > self.max_frame:
            return False
        ipc.write_all(self.fd, ipc.encode(header, blobs))
        return True


_channel: JobChannel | None = None


def dispy_provisional_result(result: Any, relay: bool = False, timeout: float | None = None) -> int:
    """Send an intermediate result to the client; 0 on success, -1 on failure."""
    if _channel is None:
        logger.warning("dispy_provisional_result called outside a job")
        return -1
    try:
        data = _channel.serializer.dumps(result)
        return 0 if _channel.send({"op": "prov", "relay": bool(relay)}, [data]) else -1
    except Exception as exc:
        logger.warning("dispy_provisional_result failed: %s", exc)
        return -1


def dispy_send_file(path: str, relay: bool = False, timeout: float | None = None) -> int:
    """Send a file to the client; its path is kept relative to the job directory (else its base name)."""
    if _channel is None:
        logger.warning("dispy_send_file called outside a job")
        return -1
    try:
        full = os.path.abspath(os.fspath(path))
        root = os.path.abspath(_channel.work_dir)
        if os.path.commonpath([full, root]) == root and full != root:
            relpath = os.path.relpath(full, root).replace(os.sep, "/")
        else:
            relpath = os.path.basename(full)
        with open(full, "rb") as fh:
            data = fh.read()
        return 0 if _channel.send({"op": "file", "relpath": relpath, "relay": bool(relay)}, [data]) else -1
    except Exception as exc:
        logger.warning("dispy_send_file(%r) failed: %s", path, exc)
        return -1


def format_exception(exc: BaseException, skip_frames: int = 1) -> str:
    """The traceback without dispy's own frames (the user sees only their code)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _capped(text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) > OUTPUT_CAP:
        data = data[:OUTPUT_CAP] + b"\n[output truncated by dispynode]\n"
    return data


def run_job(kind: str, fn: Any, program: str, args_blob: bytes, channel: JobChannel) -> None:
    """Run one job and write its ``result`` frame; never raises (the caller exits right after)."""
    global _channel
    _channel = channel
    start = time.time()
    try:
        if kind == "program":
            header, blobs = _run_program(program, args_blob, channel)
        else:
            header, blobs = _run_function(fn, args_blob, channel)
    except BaseException as exc:  # a failure of dispy's own code: still report it
        header = {"ok": False, "exc": format_exception(exc, 0),
                  "interrupted": isinstance(exc, KeyboardInterrupt)}
        blobs = [_none(channel), b"", b""]
    header["op"] = "result"
    header["t0"] = start
    header["t1"] = time.time()
    if not channel.send(header, blobs):
        header.update(ok=False, interrupted=False,
                      exc=f"job result too large: {sum(len(b) for b in blobs)} bytes exceed the frame bound "
                          f"of {channel.max_frame} bytes")
        channel.send(header, [_none(channel), b"", b""])


def _none(channel: JobChannel) -> bytes:
    return channel.serializer.dumps(None)


def _run_function(fn: Any, args_blob: bytes, channel: JobChannel) -> tuple[dict[str, Any], list[bytes]]:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    ok, interrupted, exc_text, result_blob = True, False, "", b""
    try:
        try:
            args, kwargs = channel.serializer.loads(args_blob)
            result = fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            ok, interrupted, exc_text = False, True, format_exception(exc)
        except BaseException as exc:
            ok, exc_text = False, format_exception(exc)
        else:
            try:
                result_blob = channel.serializer.dumps(result)
            except Exception as exc:
                ok = False
                kind = type(result).__name__
                exc_text = f"the job's result (a {kind} object) cannot be serialized: {exc}\n"
    finally:
        sys.stdout, sys.stderr = saved
    if not ok:
        result_blob = _none(channel)
    return ({"ok": ok, "interrupted": interrupted, "exc": exc_text},
            [result_blob, _capped(out.getvalue()), _capped(err.getvalue())])


def program_command(program: str, work_dir: str, args: list[str]) -> list[str]:
    """How to start a program computation: ``.py`` files with this Python, others directly."""
    path = program if os.path.isabs(program) else os.path.join(work_dir, program)
    if not os.path.exists(path):
        path = program  # a program on PATH
    if path.endswith(".py"):
        return [sys.executable, path, *args]
    return [path, *args]


def _run_program(program: str, args_blob: bytes, channel: JobChannel) -> tuple[dict[str, Any], list[bytes]]:
    args, _kwargs = channel.serializer.loads(args_blob)
    cmd = program_command(program, channel.work_dir, [str(a) for a in args])
    import subprocess  # here, not at the top: see lazylog's docstring (threading and fork costs)

    try:
        proc = subprocess.Popen(cmd, cwd=channel.work_dir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    if interrupted:
        return ({"ok": False, "interrupted": True, "exc": "KeyboardInterrupt\n"},
                [channel.serializer.dumps(proc.returncode), out[:OUTPUT_CAP], err[:OUTPUT_CAP]])
    return ({"ok": True, "interrupted": False, "exc": ""},
            [channel.serializer.dumps(proc.returncode), out[:OUTPUT_CAP], err[:OUTPUT_CAP]])
