"""A spawned job process (the Windows model): ``python -m dispy_plugins.executor_host.jobmain OUT ERR``.

Started ahead of need by the host as a spare: it reads the ``init`` frame (computation, depends,
setup's globals, the serializer the node had its plugin make) and prepares its namespace while
idle, then waits for a ``run`` frame, runs that job, writes its frames to stdout's original pipe and
exits (or, with ``jobs_per_process`` above 1, waits for the next job, up to that many). ``OUT`` and
``ERR`` are the descriptors of the pipes to the host that are the job's fds 1 and 2 while it runs
(see :mod:`capture`).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import Any

from dispy_plugins.executor_host import containment, ipc, lazylog, namespace, runtime
from dispy_plugins.executor_host.capture import FdCapture


def _output(argv: list[str]) -> FdCapture | None:
    """The capture pipes the host passed (their descriptor numbers on the command line)."""
    try:
        out, err = (int(word) for word in argv[:2])
    except ValueError:
        return None
    if out <= 2 or err <= 2:
        return None
    for fd in (out, err):  # what the job starts gets them as its fds 1 and 2 only
        os.set_inheritable(fd, False)
    return FdCapture(out, err)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the host ignores SIGINT; jobs must not
    lazylog.keep_log_fd()
    output = _output(sys.argv[1:] if argv is None else argv)
    containment.become_subreaper()  # what its jobs start stays below it, to be ended with each job
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # prints outside sys.stdout (C code, os.system) go to the node's log, not the pipe
    reader = ipc.BlockingReader(ctl_in, views=True)
    frame = reader.read()
    if frame is None:
        return 0
    header, blobs = frame
    info = namespace.CompInfo.from_frame(header, blobs)
    comp, n = info.computation, namespace.CompInfo.BLOBS
    serializer: Any = None
    fn: Any = None
    ns: dict[str, Any] | None = None
    error, interrupted = "", False
    try:
        serializer = namespace.load_serializer(info)
        ns = namespace.install_user_main()
        namespace.install_depends(comp, serializer, ns)
        fn = namespace.load_computation(comp, serializer, ns)
        namespace.install_setup_globals(blobs[n] if len(blobs) > n else b"", serializer, ns)
        namespace.inject_globals(info, ns, fn)
    except BaseException as exc:  # a cancel's KeyboardInterrupt while still loading: Cancelled, not failed
        interrupted = isinstance(exc, KeyboardInterrupt)
        error = (f"cannot load computation {comp.name!r} in the job process:\n"
                 f"{runtime.format_exception(exc, 0)}")
    limit = info.extra.get("max_file_size", 0)
    jobs = namespace.jobs_per_process(info)
    channel = runtime.JobChannel(ctl_out, serializer or pickle, info.work_dir, info.max_frame,
                                 limit if type(limit) is int and limit > 0 else 0, output,
                                 namespace.job_limits(info), jobs > 1)
    runtime.serve_jobs(reader, channel, comp.kind, fn, comp.program, jobs, error, interrupted, ns)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # cancelled before its job began: the host reports it Cancelled
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
