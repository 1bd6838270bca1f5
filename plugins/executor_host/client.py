"""The node-side half of an executor: launches one host process per computation and talks to it.

Runs on the node's event loop with no threads of its own and no polling: the host's stdout arrives
through an asyncio subprocess protocol, is cut into frames by :mod:`ipc` and turned into
``ExecutorEvents`` calls. Nothing received is ever unpickled: results, output and files stay opaque
bytes. Anything malformed marks only that computation broken (its jobs Terminated with the reason).

Each host runs in a cgroup of its own where the node can make one (:mod:`cgroups`); when the host is
gone, whatever is left in it is killed and the group removed. Without one, a host that died (rather
than exited) has the processes its jobs started looked for by their marker (:mod:`proctree`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from dispy_core import joblimits
from dispy_core.errors import ComputationBroken, ConfigError, DispyError, ExecutionError, SetupError
from dispy_core.interfaces import ComputationSpec, ExecutorEvents, JobOutcome
from dispy_core.protocol.session import MAX_PAYLOAD
from dispy_core.status import JobStatus
from dispy_plugins.executor_host import ipc, namespace, proctree
from dispy_plugins.executor_host.cgroups import Cgroup, CgroupRoot
from dispy_plugins.executor_host.namespace import CompInfo

logger = logging.getLogger("dispy.node.executor")

_STATUSES = frozenset(int(s) for s in JobStatus)
DEFAULT_SPARES = {"fork": 8, "spawn": 2}
"""Job processes a host keeps started ahead of need: forks are cheap to keep, interpreters are not."""
CANCEL_GRACE = 5.0
"""Seconds a cancelled job has to end after its KeyboardInterrupt (the node passes no other value)."""
_EXIT_GRACE = 1.0  # after the host exits, how long its pipe may stay open (a leaked fd) before we give up
_GROUP_REMOVE_TIMEOUT = 2.0  # seconds the processes of a killed cgroup may take to leave it


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _float(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


class _HostLink(asyncio.SubprocessProtocol):
    """One computation's host process, seen from the node."""

    def __init__(self, comp_id: str, events: ExecutorEvents, max_frame: int) -> None:
        self.comp_id = comp_id
        self.events = events
        self.reader = ipc.FrameReader(max_frame)
        self.running: dict[int, int] = {}  # job uid -> job pid (0 until started)
        self.control: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.broken = ""
        self.closing = False
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: Any = None
        self.pid = 0
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exit_timer: asyncio.TimerHandle | None = None
        self.group: Cgroup | None = None  # the host's cgroup, where the node could make one
        self.released: asyncio.Task[None] | None = None  # the group's removal, once the host is gone
        self._corked: list[Any] | None = None  # frames for the host, written together after this loop pass

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        self.pid = transport.get_pid()
        self.stdin = transport.get_pipe_transport(0)
        for fd in (0, 1):
            pipe = transport.get_pipe_transport(fd)
            sock = pipe.get_extra_info("pipe") if pipe is not None else None
            if sock is not None:
                ipc.enlarge_pipe(sock.fileno())

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if self.broken or fd != 1:
            return
        assert isinstance(data, bytes)
        try:
            frames = self.reader.feed(data)
        except ipc.IPCError as exc:
            self.fail(f"the computation host sent malformed data: {exc}")
            return
        for header, blobs in frames:
            try:
                self._dispatch(header, blobs)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                self.fail(f"the computation host sent a malformed {str(header.get('op'))[:40]!r} message: "
                          f"{type(exc).__name__}: {exc}")
                return

    def process_exited(self) -> None:
        # stdout may still hold the host's last frames: finish at connection_lost, or soon regardless
        loop = asyncio.get_running_loop()
        self._exit_timer = loop.call_later(_EXIT_GRACE, self._host_gone)

    def connection_lost(self, exc: Exception | None) -> None:
        self._host_gone()

    # ------------------------------------------------------------------ frames
    def _dispatch(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        op = header["op"]
        if op == "done":
            uid = _int(header["uid"])
            status = _int(header["status"])
            if status not in _STATUSES:
                raise ValueError(f"unknown job status {status}")
            outcome = JobOutcome(status=status, result=blobs[0], stdout=blobs[1], stderr=blobs[2],
                                 exception=_str(header["exc"]), start_time=_float(header["t0"]),
                                 end_time=_float(header["t1"]),
                                 exception_object=bytes(blobs[3]) if len(blobs) > 3 else b"")
            started = header.get("started")
            if started is not None:
                started = _float(started)
            if self.running.pop(uid, None) is None:
                logger.warning("computation %s: result for unknown job %s ignored", self.comp_id, uid)
                return
            if started is not None:
                self._notify(self.events.job_started, uid, started)
            self._notify(self.events.job_done, uid, outcome)
        elif op == "started":
            uid = _int(header["uid"])
            pid = _int(header["pid"])
            start = _float(header["t"])
            if uid in self.running:
                self.running[uid] = pid
                self._notify(self.events.job_started, uid, start)
        elif op == "prov":
            uid = _int(header["uid"])
            if uid in self.running:
                self._notify(self.events.job_provisional, uid, blobs[0])
        elif op == "file":
            uid = _int(header["uid"])
            relpath = _str(header["relpath"])
            if uid in self.running:
                self._notify(self.events.job_file, uid, relpath, blobs[0])
        elif op == "shutdown":  # dispynode_shutdown() in setup, cleanup or a job
            self._notify(self.events.node_shutdown)
        elif op in ("setup_start", "ready", "setup_failed", "closed"):
            self.control.put_nowait((op, header))
        else:
            raise ValueError(f"unknown operation {op!r}")

    def _notify(self, callback: Any, *args: Any) -> None:
        try:
            callback(self.comp_id, *args)
        except Exception:  # the node's bug must not cost this computation its other results
            logger.exception("computation %s: event handler %s failed", self.comp_id,
                             getattr(callback, "__name__", callback))

    def send(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> None:
        """Queue a frame for the host. Frames sent in one pass of the loop (the jobs one read from a client
        brought) are written together after it: one write, one wake-up of the host."""
        if self.stdin is None or self.stdin.is_closing():
            raise ExecutionError(f"computation {self.comp_id}: host process is not running")
        if self._corked is None:
            self._corked = []
            asyncio.get_running_loop().call_soon(self._uncork)
        self._corked.extend(ipc.encode_parts(header, blobs or ()))  # a large argument is not copied

    def _uncork(self) -> None:
        parts, self._corked = self._corked or [], None
        if self.stdin is None or self.stdin.is_closing():
            return  # the host is gone: its jobs are reported by the exit handling
        small: list[Any] = []
        for part in parts:
            if len(part) < 65536:
                small.append(part)
                continue
            if small:
                self.stdin.write(b"".join(small))
                small = []
            self.stdin.write(part)
        if small:
            self.stdin.write(b"".join(small))

    # ------------------------------------------------------------------ failure
    def fail(self, reason: str) -> None:
        """Mark the computation broken: kill its host and jobs, report running jobs Terminated."""
        if not self.broken:
            self.broken = reason
            logger.warning("computation %s: %s", self.comp_id, reason)
        self._kill()
        self._terminate_running(reason)
        self.control.put_nowait(("gone", {"reason": reason}))

    def _host_gone(self) -> None:
        if self.gone.done():
            return
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        code = self.transport.get_returncode() if self.transport is not None else None
        reason = f"the computation host process {proctree.describe_returncode(code)}"
        if not self.broken and (self.running or not self.closing):
            self.broken = reason
        self._kill()
        self._end_leftovers(clean=code == 0)
        self._terminate_running(reason + "; the job's result is lost")
        self.control.put_nowait(("gone", {"reason": self.broken or reason}))
        self.gone.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def _end_leftovers(self, clean: bool) -> None:
        """The host is gone: nothing it or its jobs started may outlive it.

        With a cgroup, kill what is in it and remove it. Without, a host that exited by itself has
        ended its jobs' processes (its zygote those of dead jobs); one that was killed could not, so
        look for them by their marker (a scan of all processes: only then).
        """
        if self.group is not None:
            self.group.kill()
            self.released = asyncio.get_running_loop().create_task(self._remove_group(self.group))
        elif not clean and self.pid:
            proctree.kill_tree(self.pid, proctree.marked(proctree.host_marker(self.pid), prefix=True))

    async def _remove_group(self, group: Cgroup) -> None:
        deadline = time.monotonic() + _GROUP_REMOVE_TIMEOUT
        while not group.remove():
            if time.monotonic() > deadline:
                logger.warning("computation %s: cgroup %s still has processes %s; left in place", self.comp_id,
                               group.path, group.pids())
                return
            group.kill()
            await asyncio.sleep(0.02)

    def _terminate_running(self, reason: str) -> None:
        running, self.running = self.running, {}
        me = os.getpid()
        for uid, pid in running.items():
            if pid > 1 and pid != me and hasattr(os, "getpgid"):
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == pid:  # our jobs lead their own group; anything else is not ours
                        proctree.kill_tree(pid)
            self._notify(self.events.job_done, uid,
                         JobOutcome(status=JobStatus.Terminated, exception=reason, lost=True))

    def _kill(self) -> None:
        if self.pid and not self.gone.done():
            if hasattr(os, "killpg"):
                proctree.signal_group(self.pid, signal.SIGKILL)
            elif self.transport is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.transport.kill()


class HostExecutor:
    """A :class:`~dispy_core.interfaces.JobExecutor` running each computation in a host process.

    Subclasses pick ``mode``: "fork" (jobs fork from the host) or "spawn" (a fresh interpreter per job).
    Settings read from the node config: ``executor.max_frame`` (bytes, default ``transport.max_payload`` + 1 MiB),
    ``executor.start_timeout`` (seconds a host may take to load the computation, default 60) and
    ``executor.<mode>.spares`` (job processes kept started ahead of need, default 8 forked or 2 spawned),
    ``executor.fork.zygote`` (false: the host forks job processes itself, not its fork server), the
    ceilings of job limits ``executor.max_memory`` / ``max_cpu_time`` / ``max_open_files`` (see
    :mod:`dispy_core.joblimits`; a client asks for less, or gets these) and ``executor.cgroup`` (false:
    make no cgroup per computation even where the node could).

    The computation's serializer (``spec.serializer``, a name) is made here by its plugin, through a
    plugin manager, once per name; host and job processes get it pickled (see
    :func:`~dispy_plugins.executor_host.namespace.load_serializer`).
    """

    name = "host"
    mode = "fork"

    def __init__(self, config: Any = None) -> None:
        get = getattr(config, "get", None)
        default_max = ipc.DEFAULT_MAX_FRAME
        if get:  # a job's arguments and result as large as the wire lets them be: one setting, max_payload
            default_max = max(default_max, int(get("transport.max_payload", MAX_PAYLOAD)) + (1 << 20))
        self.max_frame = int(get("executor.max_frame", default_max)) if get else default_max
        self.start_timeout = float(get("executor.start_timeout", 60.0)) if get else 60.0
        default = DEFAULT_SPARES[self.mode]
        spares = get(f"executor.{self.mode}.spares", default) if get else default
        if type(spares) is not int or spares < 1:
            raise ConfigError(f"executor.{self.mode}.spares must be an integer of at least 1, not {spares!r}")
        self.spares = spares
        self.zygote = bool(get(f"executor.{self.mode}.zygote", True)) if get else True
        try:
            self.ceilings = joblimits.node_ceilings(get)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.use_cgroup = bool(get("executor.cgroup", True)) if get else True
        self._cgroups: CgroupRoot | None = None
        self._cgroups_probed = False
        self.config = config
        self._links: dict[str, _HostLink] = {}
        self._serializers: dict[str, bytes] = {}  # serializer name -> the plugin-made serializer, pickled

    async def open(self, spec: ComputationSpec, events: ExecutorEvents) -> None:
        comp_id = spec.computation.comp_id
        if comp_id in self._links:
            raise SetupError(f"computation {comp_id} is already open on this node")
        serializer = self._serializer_blob(spec.serializer)
        loop = asyncio.get_running_loop()
        link = _HostLink(comp_id, events, self.max_frame)
        kwargs: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}
        try:
            await loop.subprocess_exec(lambda: link, sys.executable, "-m", "dispy_plugins.executor_host.host",
                                       self.mode, stdin=asyncio.subprocess.PIPE,
                                       stdout=asyncio.subprocess.PIPE, stderr=None, cwd=str(spec.work_dir),
                                       **kwargs)
        except OSError as exc:
            raise SetupError(f"cannot start the computation host process: {exc}") from exc
        link.group = self._cgroup_for(link.pid)  # before the host forks anything: it learns its job next
        self._links[comp_id] = link
        try:
            await self._setup(link, spec, serializer)
        except BaseException:
            self._links.pop(comp_id, None)
            link.closing = True
            link._kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.gone), 5.0)
            raise

    def _cgroup_for(self, pid: int) -> Cgroup | None:
        """A new cgroup holding ``pid``, or None where the node cannot make one (said once)."""
        if not self.use_cgroup or os.name != "posix":
            return None
        if not self._cgroups_probed:
            self._cgroups_probed = True
            self._cgroups, why = CgroupRoot.find()
            if self._cgroups is None:
                logger.info("no cgroup per computation (%s); jobs' processes are ended by their job processes "
                            "and the fork server", why)
            else:
                logger.debug("a cgroup per computation, in %s", self._cgroups.parent)
        if self._cgroups is None:
            return None
        group = self._cgroups.make()
        if group is None:
            return None
        try:
            group.add(pid)
        except OSError as exc:
            logger.info("cannot move a computation's host into cgroup %s (%s); going on without", group.path, exc)
            group.remove()
            return None
        return group

    def _serializer_blob(self, name: str) -> bytes:
        """The serializer named ``name``, made by its plugin and pickled (empty: the host builds it)."""
        blob = self._serializers.get(name)
        if blob is None:
            try:
                serializer = namespace.build_serializer(name, self.config)
            except DispyError as exc:
                raise SetupError(f"cannot make the computation's serializer: {exc}") from exc
            blob = self._serializers[name] = namespace.serializer_blob(serializer)
        return blob

    def _limits(self, spec: ComputationSpec) -> dict[str, int]:
        """The client's job limits (``job_limits``) under this node's ceilings."""
        try:
            asked = joblimits.check_job_limits(spec.extra.get("job_limits"))
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        return joblimits.combine(asked, self.ceilings)

    async def _setup(self, link: _HostLink, spec: ComputationSpec, serializer: bytes) -> None:
        extra = {k: v for k, v in spec.extra.items() if k != "job_limits"}
        limits = self._limits(spec)
        if limits:
            extra["limits"] = limits
        info = CompInfo.of(spec, max_frame=self.max_frame, serializer_blob=serializer,
                           extra={"spares": self.spares, "zygote": self.zygote, **extra})
        header, blobs = info.to_frame()
        link.send(header, blobs)
        timeout: float | None = self.start_timeout
        phase = "loading the computation"
        while True:
            try:
                op, msg = await asyncio.wait_for(link.control.get(), timeout)
            except TimeoutError:
                if phase == "setup":
                    raise SetupError(f"setup did not finish within {timeout:g} s (the computation's "
                                     f"setup_timeout; a client may raise it: JobCluster(..., "
                                     f"setup_timeout=seconds)); setup was stopped") from None
                raise SetupError(f"the host did not finish {phase} within {timeout:g} s "
                                 f"(executor.start_timeout)") from None
            if op == "setup_start":
                phase = "setup"
                timeout = spec.setup_timeout if spec.setup_timeout and spec.setup_timeout > 0 else None
            elif op == "ready":
                return
            elif op == "setup_failed":
                raise SetupError(_str(msg.get("reason", "setup failed")))
            elif op == "gone":
                raise SetupError(f"{phase} failed: {msg.get('reason')}")

    def _link(self, comp_id: str) -> _HostLink:
        link = self._links.get(comp_id)
        if link is None:
            raise ExecutionError(f"computation {comp_id} is not open on this node")
        return link

    async def submit(self, comp_id: str, job_uid: int, args: bytes) -> None:
        self.submit_nowait(comp_id, job_uid, args)

    def submit_nowait(self, comp_id: str, job_uid: int, args: bytes) -> None:
        """:meth:`submit` without a coroutine: it never waits (the pipe write is queued)."""
        link = self._link(comp_id)
        if link.broken:
            raise ComputationBroken(f"computation {comp_id} cannot run jobs: {link.broken}")
        if link.closing:
            raise ExecutionError(f"computation {comp_id} is closing")
        if job_uid in link.running:
            raise ExecutionError(f"job {job_uid} of computation {comp_id} is already running")
        if len(args) + 64 > self.max_frame:
            raise ExecutionError(f"job arguments of {len(args)} bytes exceed the bound of {self.max_frame}")
        link.running[job_uid] = 0
        link.send({"op": "submit", "uid": job_uid}, [args])

    async def cancel(self, comp_id: str, job_uid: int, grace: float = CANCEL_GRACE) -> bool:
        link = self._links.get(comp_id)
        if link is None or job_uid not in link.running or link.broken:
            return False
        link.send({"op": "cancel", "uid": job_uid, "grace": float(grace)})
        return True

    async def close(self, comp_id: str, *, terminate: bool = False) -> None:
        link = self._links.get(comp_id)
        if link is None:
            return
        link.closing = True
        try:
            if not link.broken and not link.gone.done():
                link.send({"op": "close", "terminate": bool(terminate)})
                while True:
                    op, msg = await link.control.get()
                    if op == "closed":
                        if msg.get("error"):
                            logger.warning("computation %s: %s", comp_id, str(msg["error"]).rstrip())
                        break
                    if op == "gone":
                        break
            try:
                await asyncio.wait_for(asyncio.shield(link.gone), 5.0)
            except TimeoutError:
                logger.warning("computation %s: host did not exit after closing; killed", comp_id)
                link._kill()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link.gone), 5.0)
            if link.released is not None:  # the node may be stopping: remove the group before it exits
                await asyncio.shield(link.released)
        finally:
            self._links.pop(comp_id, None)

    async def shutdown(self) -> None:
        links = list(self._links)
        await asyncio.gather(*(self.close(comp_id, terminate=True) for comp_id in links),
                             return_exceptions=True)
