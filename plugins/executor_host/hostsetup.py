"""Setting a computation up in its host, and cleaning up after it: the user's code before and after jobs.

Setup runs in the host, once, in the computation's directory, before any job. Its return value chooses
how jobs see the globals it made (the original's 0/1/2; the node process itself never runs user code):

- **0 and 2**: the host keeps them and, with the fork executor, every job forks from it, so jobs see them
  exactly as setup left them (modules, open files, a large list shared copy-on-write). The original's 0
  ("a subprocess only if globals are used") and 2 ("always a subprocess") are the same here: there
  always is one.
- **1** ("globals shipped to the node process"): setup's new or replaced globals are serialized here
  (data serializer: standard types, as in the original) and each job process installs its own copy; the
  host puts them aside (``cleanup`` gets them back), so a job sees only what could be shipped. Fork jobs
  install them while still idle spares, so the copy costs no job any latency.
- The spawn executor has no fork: jobs always get setup's globals shipped, whatever the value.

Any other value, an exception or a setup slower than ``setup_timeout`` fails the computation on this
node with the reason (the node side enforces the time limit and kills the host).
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any

from dispy_plugins.executor_host import containment, ipc, namespace, runtime
from dispy_plugins.executor_host.lazylog import LazyLogger
from dispy_plugins.executor_host.namespace import CompInfo

if TYPE_CHECKING:
    from dispy_plugins.executor_host.host import Host

logger = LazyLogger("dispynode")

SETUP_RESULTS = (0, 1, 2)

DEFAULT_SPARES = 8
"""Job processes kept started ahead of need, unless the node says (``executor.<mode>.spares``)."""


def set_up(host: Host, header: dict[str, Any], blobs: list[bytes]) -> None:
    """The node's ``init``: load the computation, run ``--init`` and setup, then tell the node ready (or why
    not) and start the job processes' supply."""
    info = host.info = CompInfo.from_frame(header, blobs)
    comp = info.computation
    host.reader = ipc.FrameReader(info.max_frame or ipc.DEFAULT_MAX_FRAME, views=True)  # args pass through
    namespace.shutdown_request = lambda: host.send({"op": "shutdown"}, now=True)  # dispynode_shutdown() here
    limit = info.extra.get("max_file_size", 0)
    host.max_file_size = limit if type(limit) is int and limit > 0 else 0
    host.jobs_per_process = namespace.jobs_per_process(info)  # before the zygote copies this process
    host.limits = namespace.job_limits(info)
    try:
        os.chdir(info.work_dir)
        host.serializer = namespace.load_serializer(info)
        host.ns = namespace.install_user_main()
        namespace.install_depends(comp, host.serializer, host.ns)
        host.fn = namespace.load_computation(comp, host.serializer, host.ns)
        namespace.inject_globals(info, host.ns, host.fn)
    except BaseException as exc:
        _failed(host, f"cannot load computation {comp.name!r}:\n{runtime.format_exception(exc, 0)}")
        return
    init_before = namespace.snapshot(host.ns) if info.extra.get("init_file") else None
    try:
        namespace.run_init_file(info, host.ns)  # dispynode --init: its globals are the base, like depends
    except BaseException as exc:
        _failed(host, f"the node's --init file failed:\n{runtime.format_exception(exc)}")
        return
    before = namespace.snapshot(host.ns)
    if comp.setup:
        host.send({"op": "setup_start"}, now=True)
        try:
            setup = namespace.load_callable(comp.setup, host.serializer, host.ns)
            value = namespace.call_with_setup_args(setup, comp, host.serializer)
        except BaseException as exc:
            _failed(host, f"setup raised an exception:\n{runtime.format_exception(exc)}")
            return
        finally:
            with contextlib.suppress(OSError):
                os.chdir(info.work_dir)  # jobs start where setup did, wherever setup went
        if type(value) is not int or value not in SETUP_RESULTS:
            _failed(host, f"setup returned {value!r}; expected 0, 1 or 2")
            return
        host.setup_result = value
    if host.mode == "spawn":
        base = before if init_before is None else init_before  # spawned jobs need init's globals too
        changed = namespace.changed_globals(host.ns, base, host.serializer) \
            if comp.setup or init_before is not None else {}
        header_, blobs_ = info.to_frame()
        blobs_.append(host.serializer.dumps(changed) if changed else b"")
        host.spawn_init = ipc.encode(header_, blobs_)
    else:
        if host.setup_result == 1:
            changed = namespace.changed_globals(host.ns, before, host.serializer)
            host.shipped = host.serializer.dumps(changed) if changed else b""
            host.held = namespace.take_globals(host.ns, before)
        containment.prepare()  # jobs make themselves subreapers with it (loaded once, here)
        gc.collect()
        gc.freeze()  # forked jobs then share the host's pages instead of touching them
        if info.extra.get("zygote", True) is not False:
            host.spares.start_zygote()
    del before
    host.note_own()
    host.send({"op": "ready"}, now=True)
    target = info.extra.get("spares", DEFAULT_SPARES)
    host.spares.configure(target if type(target) is int and target >= 1 else 1)


def _failed(host: Host, reason: str) -> None:
    logger.warning("computation setup failed: %s", reason.rstrip())
    host.send({"op": "setup_failed", "reason": reason}, now=True)
    host.running = False


def clean_up(host: Host) -> str:
    """Run the computation's cleanup with setup's globals put back, and the ``--init`` file's close; why
    cleanup failed, or ""."""
    error = ""
    info = host.info
    if info is not None and info.computation.cleanup and host.serializer is not None:
        namespace.put_back_globals(host.ns, host.held)
        host.held = {}
        try:
            os.chdir(info.work_dir)
            cleanup = namespace.load_callable(info.computation.cleanup, host.serializer, host.ns)
            if callable(cleanup):
                namespace.call_with_setup_args(cleanup, info.computation, host.serializer)
        except BaseException as exc:
            error = f"cleanup raised an exception:\n{runtime.format_exception(exc)}"
            logger.warning("%s", error.rstrip())
    namespace.run_init_close()
    return error
