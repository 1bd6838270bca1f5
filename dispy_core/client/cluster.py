"""JobCluster: the public, synchronous, thread-safe face of a client; all networking on its loop thread.

Every public method may be called from any thread: it either only touches state guarded by the
cluster's lock, or posts its work into the loop thread and waits for the answer there.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import functools
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from dispy_core import __version__
from dispy_core.channel import Channel
from dispy_core.client.allocation import NodeEntry, choose_alloc, parse_nodes, refuse_broadcast
from dispy_core.client.computation import FileDepend, Package, file_depend, package
from dispy_core.client.files import save_job_file, send_file_depend
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy_core.client.runtime import CallbackThread, LoopThread
from dispy_core.config import load_config
from dispy_core.errors import AuthenticationError, ConfigError, DispyError, ProtocolError, SerializationError
from dispy_core.interfaces import NodeLoad
from dispy_core.malloc_tuning import tune_malloc
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.status import FINAL_JOB_STATES, JobStatus, NodeStatus

log = logging.getLogger("dispy")

DEFAULT_DISPY_PORT = 9700
FILE_CHUNK = 4 << 20
_cluster_ids = itertools.count(1)
PIPELINE = 2
"""Jobs in flight per node CPU: one running and one waiting on the node, so a CPU that frees starts the
next job at once instead of after a round trip to the client (the node queues up to ``cpus`` extra)."""
T = TypeVar("T")

# A node connection's life: connecting -> setup -> ready (-> closing -> setup -> ready: resetup) -> closed.
CONNECTING, SETUP, READY, CLOSING, CLOSED = "connecting", "setup", "ready", "closing", "closed"


class _NodeConn:
    """A node this cluster talks to: its public DispyNode view plus the channel, life state and queues."""

    def __init__(self, node: DispyNode, via: NodeEntry | None) -> None:
        self.node = node
        self.via = via
        self.alloc: NodeAllocate | None = None
        self.channel: Channel | None = None
        self.state = CONNECTING
        self.allocated = True  # False after deallocate_node: set up, but no new jobs
        self.ready = False  # the scheduler may send jobs here: state READY and allocated
        self.max_cpus = 0  # CPUs the node granted this computation (set_node_cpus stays within)
        self.setup_args: tuple[Any, ...] = ()
        self.depends: list[Any] = []
        self.running: dict[int, DispyJob] = {}
        self.pinned: collections.deque[DispyJob] = collections.deque()
        self.drained: asyncio.Event | None = None  # set when ``running`` empties while closing
        self.op: asyncio.Task[Any] | None = None  # the life operation in progress (start, close, resetup)
        self.file_errors: dict[int, str] = {}  # first refusal of a file transfer, by request id

    def set_ready(self) -> None:
        self.ready = self.state == READY and self.allocated


def check_jobs_per_process(value: Any) -> int:
    """``jobs_per_process`` (an extension; like ``multiprocessing.Pool``'s ``maxtasksperchild``).

    1, the default, is the original's model: every job in a fresh process, so nothing a job does to
    its globals reaches another job. N > 1 lets one job process run up to N jobs of this computation
    in turn: far less CPU per tiny job, but a job sees what earlier jobs in its process left behind.
    """
    if type(value) is not int or value < 1:
        raise ValueError(f"jobs_per_process must be an integer of at least 1, not {value!r}")
    return value


class JobCluster:
    """Runs ``computation`` on the given nodes; see the client API reference for every parameter."""

    def __init__(self, computation: Any, nodes: Any = None, depends: list[Any] | None = None,
                 job_status: Any = None, cluster_status: Any = None, host: Any = None, ext_host: Any = None,
                 dispy_port: int | None = None, ipv4_udp_multicast: bool = False, dest_path: str | None = None,
                 loglevel: int = logging.INFO, setup: Any = None, cleanup: Any = True,
                 ping_interval: float | None = None, pulse_interval: float | None = None,
                 reentrant: bool = False, secret: str = "", keyfile: str | None = None,
                 certfile: str | None = None, recover_file: str | None = None, **extra: Any) -> None:
        unknown = set(extra) - {"cafile", "setup_timeout", "msg_timeout", "poll_interval", "plugins",
                                "jobs_per_process"}
        if unknown:
            raise TypeError(f"JobCluster got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        tune_malloc()
        logging.getLogger("dispy").setLevel(loglevel)
        if not logging.getLogger().handlers and not logging.getLogger("dispy").handlers:
            logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if keyfile and not certfile:
            raise ValueError("keyfile needs certfile")
        for name, path in (("certfile", certfile), ("keyfile", keyfile), ("cafile", extra.get("cafile"))):
            if path and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} is not a readable file")
        if not isinstance(cleanup, bool) and not callable(cleanup):
            raise ValueError(f"cleanup must be True, False or a function, not {cleanup!r}")
        public = _public_config()
        self.config = load_config("client", certfile=certfile, keyfile=keyfile, cafile=extra.get("cafile"),
                                  msg_timeout=extra.get("msg_timeout") or getattr(public, "MsgTimeout", None))
        self.max_file_size = int(getattr(public, "MaxFileSize", 0) or 0)
        self.plugins = DispyPluginManager(self.config)
        for plugin in extra.get("plugins") or ():  # extension: plugin objects for this cluster only
            self.plugins.register(plugin)
        self.serializer = self.plugins.make_serializer()
        self.scheduler = self.plugins.make_scheduler()
        self.discovery = self.plugins.make_discovery()
        self.transport = self.plugins.make_transport("tcp")

        self.secret = secret or os.environ.get("DISPY_SECRET", "")
        self.node_port = public.node_port(dispy_port) if public else (dispy_port or DEFAULT_DISPY_PORT) + 1
        if nodes is None:
            env_nodes = os.environ.get("DISPY_NODES", "")
            nodes = [n.strip() for n in env_nodes.split(",") if n.strip()] or ["*"]
        self._entries: list[NodeEntry] = parse_nodes(nodes, self.node_port)
        if all(e.alloc.is_pattern for e in self._entries):
            refuse_broadcast(self._entries, "nodes")
        self._pkg: Package = package(computation, list(depends or []), setup, cleanup, self.serializer)
        self._cleanup_files = cleanup is not False
        self.dest_path = dest_path
        self.setup_timeout = float(extra.get("setup_timeout", 600.0))
        self.jobs_per_process = check_jobs_per_process(extra.get("jobs_per_process", 1))
        if pulse_interval is not None and not (isinstance(pulse_interval, int | float)
                                                and 1 <= pulse_interval <= 600):
            raise ValueError(f"pulse_interval must be a number of seconds between 1 and 600, not {pulse_interval!r}")
        self.reentrant = reentrant
        self.pulse_interval = pulse_interval
        self.host = host
        self.name = f"{self._pkg.name}"
        self.comp_id = f"{self._pkg.name[:40]}-{uuid.uuid4().hex[:16]}"
        self.job_status = job_status
        self.cluster_status = cluster_status

        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self._unfinished = 0
        self._jobs: dict[int, DispyJob] = {}
        self._uids = itertools.count(1)
        self._pending: collections.deque[DispyJob] = collections.deque()
        self._nodes: dict[str, _NodeConn] = {}
        self._records: dict[str, DispyNode] = {}  # every node ever set up, for print_status
        self._failed: dict[str, str] = {}  # address -> why the node cannot be used
        self._closed = False
        self._start_time = time.time()
        self._loop = LoopThread(f"dispy-{next(_cluster_ids)}")
        self._callbacks = CallbackThread("dispy-callbacks") if (job_status or cluster_status) else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._discovered = threading.Event()
        self._parked: list[DispyJob] = []
        self._loop.submit(self._discover_initial())

    # ================================================================== public API: jobs
    def submit(self, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job; returns the DispyJob (None if the arguments cannot be serialized)."""
        return self._submit(None, args, kwargs)

    def submit_node(self, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job for one particular node (DispyNode, address or name); None if it is not in the cluster."""
        return self._submit(node, args, kwargs)

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """``submit`` with the job's ``id`` set before anything (a callback included) can see it."""
        return self._submit(None, args, kwargs, job_id)

    def submit_job_id_node(self, job_id: Any, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """``submit_node`` with the job's ``id`` set first."""
        return self._submit(node, args, kwargs, job_id)

    def _submit(self, node: Any, args: tuple[Any, ...], kwargs: dict[str, Any], job_id: Any = None) -> DispyJob | None:
        if self._closed:
            raise RuntimeError("cluster is closed; create a new one to submit jobs")
        job_depends = kwargs.pop("dispy_job_depends", None) or []
        if self._pkg.kind == "program":
            if kwargs:
                raise TypeError("a program computation takes positional string arguments only")
            args = tuple(str(a) for a in args)
        pinned = None
        if node is not None:
            pinned = self._call(self._pin_key, node, default=None)
            if pinned is None:
                log.warning("job not submitted: node %r is not in cluster %s", node, self.name)
                return None
        uid = next(self._uids)
        job = DispyJob(uid, args, kwargs)
        if job_id is not None:
            job.id = job_id
        try:
            job._payload = self.serializer.dumps((args, kwargs))
            job._files = [(d.path, d.relpath) for d in (file_depend(os.fspath(p)) for p in job_depends)]
        except (SerializationError, ValueError, TypeError) as exc:
            log.warning("job %s not submitted: %s", uid, exc)
            return None
        job._pinned = pinned
        job.submit_time = time.time()
        with self._lock:
            self._unfinished += 1
            self._jobs[uid] = job
        self._loop.call(self._enqueue, job)
        return job

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is done; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._all_done:
            while self._unfinished > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._all_done.wait(remaining if remaining is not None else 1.0)
        return True

    def cancel(self, job: DispyJob) -> int:
        """Remove a queued job or interrupt a running one: 0 if done so, -1 if the job is not active."""
        if job.status in FINAL_JOB_STATES or job._uid not in self._jobs:
            return -1
        return self._run(self._cancel(job._uid), self.config.msg_timeout, default=-1)

    def close(self, timeout: float | None = None, terminate: bool = False) -> bool:
        """Wait for jobs (up to ``timeout``), cancel the rest if ``terminate``, then release the nodes.

        True if every job finished in time; False otherwise (then, without ``terminate``, the cluster
        stays open and ``close`` may be called again)."""
        if self._closed:
            return True
        done = self.wait(timeout)
        if not done and not terminate:
            return False
        self._closed = True
        try:
            self._loop.run(self._shutdown(terminate=not done), timeout=self.config.msg_timeout + 30)
        except (TimeoutError, DispyError, OSError) as exc:
            log.warning("closing cluster %s: %s", self.name, exc)
        self._loop.stop()
        if self._callbacks is not None:
            self._callbacks.stop(timeout=2.0)
        return done

    def __enter__(self) -> JobCluster:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(terminate=exc_type is not None, timeout=0 if exc_type is not None else None)

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._loop.stop(timeout=0)
        except Exception:
            pass

    # ================================================================== public API: nodes
    def discover_nodes(self, nodes: Any) -> int:
        """Contact the given hosts (names, addresses, NodeAllocate...) and set up those that match the
        cluster's nodes; waits until each was tried and returns how many are now usable.

        ``'*'`` and other wildcards raise ConfigError: they need broadcast discovery, not implemented yet."""
        entries = parse_nodes(nodes, self.node_port)
        refuse_broadcast(entries, "discover_nodes")
        conns = self._run(self._discover(entries), self._op_timeout(), default=[])
        return sum(1 for conn in conns if conn.state == READY)

    def allocate_node(self, node: Any) -> int:
        """Use ``node`` (name, address, DispyNode, NodeAllocate or wildcard) for this cluster: 0 if it is
        (or, for a wildcard, will be) used, -1 if it could not be set up."""
        return self._run(self._allocate_node(node), self._op_timeout(), default=-1)

    def deallocate_node(self, node: Any) -> int:
        """Send no new jobs to ``node``; its running jobs finish and its setup stays (allocate_node resumes)."""
        return self._call(self._deallocate_node, node, default=-1)

    def close_node(self, node: Any, terminate: bool = False) -> int:
        """Release ``node``: no new jobs; once its running jobs finish (or are terminated), it runs
        ``cleanup`` and removes the files. Returns 0 at once; ``cluster_status`` gets ``DispyNode.Closed``."""
        return self._call(self._request_close, node, terminate, default=-1)

    def resetup_node(self, node: Any) -> int:
        """Close the computation on ``node`` without releasing it, call ``allocate`` again (new
        ``setup_args``/``depends``) and set it up again. Returns 0 at once; ``Initialized`` follows."""
        return self._call(self._request_resetup, node, default=-1)

    def node_jobs(self, node: Any) -> list[DispyJob]:
        """The jobs running on ``node`` now."""
        return self._call(self._node_jobs, node, default=[])

    def set_node_cpus(self, node: Any, cpus: int) -> int:
        """Use ``cpus`` CPUs of ``node`` (0: all it granted; negative: all but that many): the CPUs now
        used, or -1 if the node is not usable or the number leaves none."""
        return self._call(self._set_node_cpus, node, cpus, default=-1)

    def send_file(self, path: Any, node: Any) -> int:
        """Send a file into the computation's directory on ``node``, keeping its relative directory
        (see ``send_file_depend``): 0 on success, -1 (with the reason logged) otherwise."""
        try:
            dep = send_file_depend(path)
        except (ValueError, OSError) as exc:
            log.error("send_file(%r): %s", path, exc)
            return -1
        timeout = 6 * self.config.msg_timeout + dep.size / (1 << 20)
        return self._run(self._send_file_to(node, dep), timeout, default=-1)

    def status(self) -> dict[str, Any]:
        """A snapshot: usable ``nodes`` (DispyNode), ``failed_nodes`` (address -> reason), job counts."""
        discovering = not self._discovered.is_set()  # before the snapshot: "done" then covers every node
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.status == JobStatus.Created)
            running = sum(1 for j in self._jobs.values() if j.status == JobStatus.Running)
            unfinished = self._unfinished
        nodes, failed = self._call(self._node_snapshot, default=None) or self._node_snapshot()
        return {"name": self.name, "nodes": nodes, "failed_nodes": failed, "pending": pending,
                "running": running, "unfinished": unfinished, "discovering": discovering}

    def print_status(self) -> None:
        print(self.format_status())

    def format_status(self) -> str:
        """The table ``print_status`` prints: per node CPUs, jobs, times and bytes sent / received."""
        records = self._call(self._status_records, default=None) or list(self._records.values())
        lines = ["", f"{'Node':>24} | {'CPUs':>4} | {'Jobs':>5} | {'Sec/Job':>8} | {'Node Time Sec':>13} | "
                 f"{'Sent':>9} | {'Rcvd':>9}", "-" * 90]
        total_time = 0.0
        total_jobs = 0
        for node in records:
            per_job = node.cpu_time / node.jobs_done if node.jobs_done else 0.0
            label = f"{node.ip_addr}" + (f" ({node.name})" if node.name else "")
            lines.append(f"{label[:24]:>24} | {node.cpus:>4} | {node.jobs_done:>5} | {per_job:>8.3f} | "
                         f"{node.cpu_time:>13.3f} | {_human(node.tx):>9} | {_human(node.rx):>9}")
            total_time += node.cpu_time
            total_jobs += node.jobs_done
        wall = time.time() - self._start_time
        speedup = total_time / wall if wall > 0 else 0.0
        lines.append("")
        lines.append(f"Total job time: {total_time:.3f} sec, wall time: {wall:.3f} sec, speedup: {speedup:.3f}")
        lines.append(f"Jobs done: {total_jobs}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ crossing into the loop thread
    def _loop_alive(self) -> bool:
        loop = self._loop.loop
        return loop.is_running() and not loop.is_closed()

    def _call(self, fn: Callable[..., T], *args: Any, default: T) -> T:
        """``fn(*args)`` run on the loop thread (``default`` once the cluster's loop has ended)."""
        if self._loop.in_loop:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return self._run(call(), self.config.msg_timeout, default)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None, default: T) -> T:
        if not self._loop_alive():
            coro.close()
            return default
        if self._loop.in_loop:  # a hook or allocate() calling back in: waiting here would deadlock
            coro.close()
            raise RuntimeError("this cluster method cannot be called from the cluster's own loop thread")
        try:
            return self._loop.run(coro, timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            log.warning("cluster %s: %s did not complete: %s", self.name, getattr(coro, "__name__", coro),
                        exc or type(exc).__name__)
            return default

    def _op_timeout(self) -> float:
        return self.setup_timeout + 4 * self.config.msg_timeout

    # ================================================================== loop side: finding and using nodes
    async def _discover_initial(self) -> None:
        await self._discover(self._entries)
        self._discovered.set()
        parked, self._parked = self._parked, []
        for job in parked:
            self._enqueue(job)
        if not any(c.state == READY for c in self._nodes.values()):
            failed = "; ".join(f"{k}: {r}" for k, r in self._failed.items()) or "none answered"
            log.error("cluster %s has no usable node (%s); jobs wait until a node is added", self.name, failed)

    async def _discover(self, entries: list[NodeEntry]) -> list[_NodeConn]:
        """Contact each named host (wildcards are only matched, never contacted); wait until each was tried."""
        conns: list[_NodeConn] = []
        for entry in entries:
            alloc = entry.alloc
            if alloc.is_pattern:
                continue
            assert alloc.port is not None
            try:
                addresses = await self.discovery.resolve(alloc.host, alloc.port)
            except (ConfigError, OSError) as exc:
                self._record_failure(f"{alloc.host}:{alloc.port}", str(exc))
                continue
            for address in addresses:
                key = f"{address.ip_addr}:{address.port}"
                conn = self._nodes.get(key)
                if conn is None or conn.state == CLOSING:
                    if conn is not None and conn.op is not None:
                        await asyncio.wait([conn.op])  # a close in progress: then start afresh
                    conn = self._nodes.get(key)
                if conn is None:
                    node = self._records.get(key) or DispyNode(address.ip_addr, address.port)
                    conn = _NodeConn(node, entry)
                    self._nodes[key] = conn
                    conn.op = self._spawn(self._start_node(conn))
                conns.append(conn)
        pending = [c.op for c in conns if c.op is not None and not c.op.done()]
        if pending:
            await asyncio.wait(pending)
        return conns

    async def _start_node(self, conn: _NodeConn) -> None:
        node = conn.node
        timeout = self.config.msg_timeout
        try:
            channel = await Channel.connect(
                self.transport, node.ip_addr, node.port, secret=self.secret,
                serializers={self.serializer.name: self.serializer}, serializer=self.serializer.name,
                timeout=timeout, name=self.name, software=f"neodispy {__version__}")
        except AuthenticationError as exc:
            await self._fail(conn, f"authentication failed (is the secret the node's?): {exc}")
            return
        except (ProtocolError, DispyError, OSError) as exc:
            await self._fail(conn, f"cannot connect: {exc}")
            return
        conn.channel = channel
        self._spawn(channel.run(lambda msg: self._handle(conn, msg)),
                    on_done=lambda _: self._channel_ended(conn, channel))
        try:
            info = await channel.request(m.NodeInfoRequest(channel.next_req_id()), timeout)
            assert isinstance(info, m.NodeInfo)
            node.name, node.platform = info.name, info.platform
            alloc = choose_alloc(self._entries, node.ip_addr, node.port, node.name, conn.via)
            if alloc is None:
                log.info("node %s (%s) matches no entry of cluster %s's nodes; not used", node.key, node.name,
                         self.name)
                await self._release(conn, notify=False)
                return
            conn.alloc = alloc
            await self._setup_node(conn, info)
        except (DispyError, OSError, AssertionError) as exc:
            await self._fail(conn, str(exc) or type(exc).__name__)

    async def _setup_node(self, conn: _NodeConn, info: m.NodeInfo) -> None:
        """allocate() decides CPUs, depends and setup_args; then open, send files, run setup."""
        node, alloc, channel = conn.node, conn.alloc, conn.channel
        assert alloc is not None and channel is not None
        node.avail_info = DispyNodeAvailInfo.from_mapping(info.avail_info)
        node.avail_cpus = info.avail_cpus
        node.update_time = time.time()
        try:
            cpus = alloc.allocate(self, node.ip_addr, node.name, info.cpus, node.avail_info, info.platform)
            # Captured now: a shared NodeAllocate may set other values for the next node meanwhile.
            conn.depends = list(alloc.depends or [])
            args = alloc.setup_args
            conn.setup_args = tuple(args) if isinstance(args, list | tuple) else (args,)
            hooked = self.plugins.hook.dispy_allocate(cluster=self, node=node, cpus=cpus)
            cpus = int(hooked if hooked is not None else cpus)
        except Exception as exc:
            raise DispyError(f"allocate() of {type(alloc).__name__} raised {type(exc).__name__}: {exc}") from exc
        if cpus <= 0:
            log.info("node %s (%s) not used: allocate gave 0 CPUs", node.key, node.name)
            await self._release(conn, notify=conn.state == CLOSING, reason="allocate gave 0 CPUs")
            return
        conn.state = SETUP
        await self._open_computation(conn, channel, cpus)
        if conn.state != SETUP:  # closed meanwhile (cluster closing, connection lost)
            return
        conn.state = READY
        conn.set_ready()
        node.reason = None
        self._failed.pop(node.key, None)
        self._records[node.key] = node
        node.update_time = time.time()
        log.info("node %s (%s) ready with %d CPUs", node.key, node.name, node.cpus)
        self._node_status(NodeStatus.Initialized, node)
        self._dispatch()

    async def _open_computation(self, conn: _NodeConn, channel: Channel, cpus: int) -> None:
        pkg, timeout = self._pkg, self.config.msg_timeout
        setup_args = self.serializer.dumps(conn.setup_args) if conn.setup_args else b""
        reply = await channel.request(m.ComputationOpen(
            channel.next_req_id(), self.comp_id, self.name, pkg.kind, code=pkg.code, source=pkg.source,
            code_name=pkg.code_name, program=pkg.program, py_version=list(sys.version_info[:2]),
            depends_code=pkg.depends_code, setup=pkg.setup, cleanup=pkg.cleanup,
            cleanup_files=self._cleanup_files, setup_args=setup_args, cpus=cpus, dest_path=self.dest_path or "",
            setup_timeout=self.setup_timeout,
            options=self._computation_options()), timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(f"node could not open the computation: {reply.error}")
        files = list(pkg.files) + [file_depend(os.fspath(p)) for p in conn.depends]
        for dep in files:
            await self._send_file(conn, channel, dep, 0)
        reply = await channel.request(m.ComputationSetup(channel.next_req_id(), self.comp_id),
                                      self.setup_timeout + timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(f"setup failed: {reply.error.rstrip()}")
        conn.max_cpus = min(cpus, reply.cpus) if reply.cpus else cpus
        conn.node.cpus = conn.max_cpus

    def _computation_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.pulse_interval:
            options["pulse_interval"] = self.pulse_interval
        if self._pkg.source_complete:
            options["source_complete"] = True
        if self._pkg.source_modules:
            options["source_modules"] = self._pkg.source_modules
        if self.jobs_per_process > 1:
            options["jobs_per_process"] = self.jobs_per_process
        return options

    async def _send_file(self, conn: _NodeConn, channel: Channel, dep: FileDepend, job_uid: int) -> None:
        """Stream a file in chunks; the node acknowledges the last one or refuses with a reason (which may
        come early, at the first chunk: then the rest is not sent)."""
        req_id = channel.next_req_id()
        try:
            with open(dep.path, "rb") as handle:
                offset = 0
                while True:
                    data = handle.read(FILE_CHUNK)
                    last = offset + len(data) >= dep.size
                    msg = m.FileChunk(req_id, self.comp_id, dep.relpath, dep.size, offset, data, last=last,
                                      job_uid=job_uid, mode=dep.mode)
                    if last:
                        reply = await channel.request(msg, self.config.msg_timeout)
                        assert isinstance(reply, m.FileAck)
                        if not reply.ok:
                            reason = conn.file_errors.get(req_id) or reply.error
                            raise DispyError(f"node refused file {dep.relpath!r}: {reason}")
                        return
                    await channel.send(msg)
                    offset += len(data)
                    if req_id in conn.file_errors:
                        raise DispyError(f"node refused file {dep.relpath!r}: {conn.file_errors[req_id]}")
        finally:
            conn.file_errors.pop(req_id, None)

    async def _send_file_to(self, spec: Any, dep: FileDepend) -> int:
        conn = self._find(spec)
        if conn is None or conn.state != READY or conn.channel is None:
            log.error("send_file(%r): node %r is not a usable node of cluster %s", dep.path, spec, self.name)
            return -1
        try:
            await self._send_file(conn, conn.channel, dep, 0)
        except (DispyError, OSError) as exc:
            log.error("send_file(%r) to %s: %s", dep.path, conn.node.key, exc)
            return -1
        return 0

    # ------------------------------------------------------------------ node failures and releases
    def _record_failure(self, key: str, reason: str) -> None:
        self._failed[key] = reason
        log.error("node %s cannot be used by cluster %s: %s", key, self.name, reason)

    async def _fail(self, conn: _NodeConn, reason: str) -> None:
        """The node cannot be used: say why (log, ``status()['failed_nodes']``, ``node.reason``, Closed)."""
        if conn.state == CLOSED:
            return
        if self._closed:
            reason = f"cluster closed ({reason})"
        else:
            self._record_failure(conn.node.key, reason)
        conn.node.reason = reason
        await self._release(conn, notify=True, reason=reason)

    async def _release(self, conn: _NodeConn, notify: bool, reason: str | None = None) -> None:
        channel = conn.channel
        self._drop(conn, notify, reason or "node closed")
        if channel is not None:
            await channel.close(reason or "released")

    def _drop(self, conn: _NodeConn, notify: bool, reason: str) -> None:
        """The connection is done with: forget it, cancel jobs pinned to it, tell the program."""
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        conn.ready = False
        node = conn.node
        if self._nodes.get(node.key) is conn:
            del self._nodes[node.key]
        if conn.channel is not None:
            node.tx, node.rx = conn.channel.tx_bytes, conn.channel.rx_bytes
        pinned, conn.pinned = list(conn.pinned), collections.deque()
        for job in pinned:
            job.exception = f"node {node.key} closed: {reason}"
            self._job_final(job, JobStatus.Cancelled)
        if conn.drained is not None:
            conn.drained.set()
        if notify:
            self._node_status(NodeStatus.Closed, node)

    def _channel_ended(self, conn: _NodeConn, channel: Channel) -> None:
        """The channel ended: unless on purpose, jobs there are abandoned (or requeued when reentrant)."""
        if conn.channel is not channel or conn.state == CLOSED:
            return
        reason = channel.close_reason or "closed"
        if conn.running and not self._closed:
            log.warning("lost node %s (%s) with %d running jobs", conn.node.key, reason, len(conn.running))
        for job in list(conn.running.values()):
            conn.running.pop(job._uid, None)
            conn.node.busy -= 1
            decision = self.plugins.hook.dispy_recover(job=job, failure="node-lost")
            if decision not in (None, "resubmit", "abandon"):
                log.warning("dispy_recover returned %r; expected 'resubmit', 'abandon' or None", decision)
                decision = None
            if decision == "resubmit" or (decision is None and self.reentrant):
                job.status = JobStatus.Created
                self._pending.appendleft(job)
            else:
                job.exception = f"node {conn.node.ip_addr} lost: {reason}"
                self._job_final(job, JobStatus.Abandoned)
        if not self._closed:
            conn.node.reason = f"connection lost: {reason}"
            self._record_failure(conn.node.key, conn.node.reason)
        self._drop(conn, True, reason)
        self._dispatch()

    # ------------------------------------------------------------------ the node operations of the API
    def _find(self, spec: Any) -> _NodeConn | None:
        """The connection a program means by a DispyNode, NodeAllocate, ``ip:port``, address or name."""
        if isinstance(spec, DispyNode):
            return self._nodes.get(spec.key)
        port = None
        if isinstance(spec, NodeAllocate):
            spec, port = spec.host, spec.port
        if not isinstance(spec, str):
            return None
        conn = self._nodes.get(spec)
        if conn is not None:
            return conn
        matches = [c for c in self._nodes.values()
                   if spec in (c.node.ip_addr, c.node.name) and (port is None or c.node.port == port)]
        preferred = [c for c in matches if c.node.port == self.node_port]
        candidates = preferred or matches
        return candidates[0] if candidates else None

    def _pin_key(self, spec: Any) -> str | None:
        conn = self._find(spec)
        if conn is not None:
            return conn.node.key
        if self._discovered.is_set():
            return None
        if isinstance(spec, DispyNode):
            return spec.key
        return f"{spec}:{self.node_port}" if isinstance(spec, str) else None  # may still be being found

    async def _allocate_node(self, spec: Any) -> int:
        entries = parse_nodes(spec, self.node_port)
        if len(entries) != 1:
            raise ValueError(f"allocate_node takes one node, not {spec!r}")
        entry = entries[0]
        if entry.alloc.is_pattern:
            self._entries.append(entry)  # applies to nodes found from now on, and to deallocated ones now
            for conn in self._nodes.values():
                if conn.state == READY and entry.alloc.matches(conn.node.ip_addr, conn.node.name):
                    conn.allocated = True
                    conn.set_ready()
            self._dispatch()
            return 0
        known = self._find(spec if isinstance(spec, DispyNode | str) else entry.alloc)
        if known is not None and known.op is not None and not known.op.done():
            await asyncio.wait([known.op])
        if not entry.plain:
            self._entries.insert(0, entry)  # its settings govern this node from now on
        conns = await self._discover([entry]) if known is None or known.state != READY else [known]
        usable = 0
        for conn in conns:
            if conn.state == READY:
                conn.allocated = True
                conn.set_ready()
                usable += 1
        self._dispatch()
        return 0 if usable else -1

    def _deallocate_node(self, spec: Any) -> int:
        conn = self._find(spec)
        if conn is None or conn.state not in (READY, SETUP, CONNECTING):
            return -1
        conn.allocated = False
        conn.set_ready()
        return 0

    def _request_close(self, spec: Any, terminate: bool) -> int:
        conn = self._find(spec)
        if conn is None or conn.state == CLOSED:
            return -1
        if conn.state != CLOSING:
            self._queue_op(conn, lambda: self._close_op(conn, release=True, terminate=terminate))
        return 0

    def _request_resetup(self, spec: Any) -> int:
        conn = self._find(spec)
        if conn is None or conn.state != READY:
            return -1
        self._queue_op(conn, lambda: self._resetup_op(conn))
        return 0

    def _queue_op(self, conn: _NodeConn, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a life operation on ``conn`` after the one in progress (operations never interleave)."""
        previous = conn.op
        conn.ready = False  # no new jobs from now on

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            if conn.state != CLOSED:
                await make()

        conn.op = self._spawn(run())

    async def _close_op(self, conn: _NodeConn, release: bool, terminate: bool) -> None:
        """Stop new jobs, let running ones finish (or terminate them), close the computation there."""
        channel = conn.channel
        if channel is None or conn.state == CLOSED:
            return
        was_setup = conn.state in (READY, CLOSING)
        conn.state = CLOSING
        conn.ready = False
        if terminate:
            self._cancel_running(conn, "terminated: node closed")
        elif conn.running:
            conn.drained = asyncio.Event()
            await conn.drained.wait()
            conn.drained = None
        if conn.state == CLOSED:
            return
        if was_setup and not channel.closed:
            try:
                await channel.request(m.ComputationClose(channel.next_req_id(), self.comp_id, terminate),
                                      self.setup_timeout + self.config.msg_timeout)
            except (DispyError, OSError) as exc:
                log.warning("node %s: closing computation: %s", conn.node.key, exc)
        if release:
            await self._release(conn, notify=True)

    async def _resetup_op(self, conn: _NodeConn) -> None:
        await self._close_op(conn, release=False, terminate=False)
        channel = conn.channel
        if conn.state == CLOSED or channel is None:
            return
        try:
            info = await channel.request(m.NodeInfoRequest(channel.next_req_id()), self.config.msg_timeout)
            assert isinstance(info, m.NodeInfo)
            await self._setup_node(conn, info)
        except (DispyError, OSError, AssertionError) as exc:
            await self._fail(conn, f"setting up again: {exc}")

    def _node_jobs(self, spec: Any) -> list[DispyJob]:
        conn = self._find(spec)
        return [job for job in conn.running.values() if not job._prefetched] if conn else []

    def _set_node_cpus(self, spec: Any, cpus: int) -> int:
        conn = self._find(spec)
        if conn is None or conn.state != READY or not isinstance(cpus, int):
            return -1
        limit = conn.max_cpus
        wanted = limit if cpus == 0 else (limit + cpus if cpus < 0 else min(cpus, limit))
        if wanted <= 0:
            log.warning("set_node_cpus(%s, %d): leaves no CPU of the %d granted", conn.node.key, cpus, limit)
            return -1
        conn.node.cpus = wanted
        self._dispatch()
        return wanted

    def _node_snapshot(self) -> tuple[list[DispyNode], dict[str, str]]:
        for conn in self._nodes.values():
            if conn.channel is not None:
                conn.node.tx, conn.node.rx = conn.channel.tx_bytes, conn.channel.rx_bytes
        return [c.node for c in self._nodes.values() if c.state == READY], dict(self._failed)

    def _status_records(self) -> list[DispyNode]:
        self._node_snapshot()
        return list(self._records.values())

    # ================================================================== loop side: jobs
    def _enqueue(self, job: DispyJob) -> None:
        if job._pinned is not None:
            conn = self._nodes.get(job._pinned)
            if conn is None and not self._discovered.is_set():
                self._parked.append(job)  # its node may still be being found
                return
            if conn is None:
                job.exception = f"node {job._pinned} is not in this cluster"
                self._job_final(job, JobStatus.Cancelled)
                return
            conn.pinned.append(job)
        else:
            self._pending.append(job)
        self._notify_job(job, None)
        self._dispatch()

    def _dispatch(self) -> None:
        """Send queued jobs to nodes with free CPUs; pinned jobs first, then the scheduler's choice."""
        for conn in self._nodes.values():
            while conn.pinned and conn.ready and conn.node.busy < _capacity(conn):
                self._send_job(conn, conn.pinned.popleft())
        while self._pending:
            loads = [NodeLoad(c.node.key, _capacity(c), c.node.busy, c.node.jobs_done)
                     for c in self._nodes.values() if c.ready]
            choice = self.scheduler.choose(loads) if loads else None
            if choice is None:
                return
            self._send_job(self._nodes[choice], self._pending.popleft())

    def _send_job(self, conn: _NodeConn, job: DispyJob) -> None:
        assert conn.channel is not None
        prefetched = conn.node.busy >= conn.node.cpus
        conn.node.busy += 1
        conn.running[job._uid] = job
        job._node_key = conn.node.key
        job.ip_addr = conn.node.ip_addr
        job.start_time = time.time()
        job._prefetched = prefetched  # if so, it waits on the node for a CPU: Running once the node starts it
        if not prefetched:
            previous = job.status
            job.status = JobStatus.Running
            self._notify_job(job, previous)
        if job._files:  # its files go first: a task, as they are streamed in chunks
            self._spawn(self._transmit(conn, conn.channel, job))
        elif not conn.channel.send_nowait(m.JobSubmit(self.comp_id, job._uid, job._payload, [])):
            self._send_failed(conn, job, conn.channel.close_reason or "connection closed")

    def _on_started(self, conn: _NodeConn, msg: m.JobStarted) -> None:
        job = conn.running.get(msg.job_uid)
        if job is None or not job._prefetched:
            return
        job._prefetched = False
        job.start_time = msg.start_time
        previous = job.status
        job.status = JobStatus.Running
        self._notify_job(job, previous)

    async def _transmit(self, conn: _NodeConn, channel: Channel, job: DispyJob) -> None:
        try:
            for path, relpath in job._files:
                dep = file_depend(path)
                dep.relpath = relpath
                await self._send_file(conn, channel, dep, job._uid)
            await channel.send(m.JobSubmit(self.comp_id, job._uid, job._payload,
                                           [relpath for _, relpath in job._files]))
        except (DispyError, OSError, ValueError) as exc:
            self._send_failed(conn, job, str(exc))

    def _send_failed(self, conn: _NodeConn, job: DispyJob, reason: str) -> None:
        if conn.running.pop(job._uid, None) is not None:
            conn.node.busy -= 1
            job.exception = f"could not send job to {conn.node.ip_addr}: {reason}"
            self._job_final(job, JobStatus.Cancelled)
            self._after_job(conn)

    def _handle(self, conn: _NodeConn, msg: m.Message) -> None:
        if isinstance(msg, m.JobResult):
            self._on_result(conn, msg)
        elif isinstance(msg, m.JobStarted):
            self._on_started(conn, msg)
        elif isinstance(msg, m.JobProvisional):
            self._on_provisional(conn, msg)
        elif isinstance(msg, m.JobRefused):
            self._on_refused(conn, msg)
        elif isinstance(msg, m.JobFile):
            self._on_job_file(conn, msg)
        elif isinstance(msg, m.Pulse):
            self._on_pulse(conn, msg)
        elif isinstance(msg, m.Ping):  # a node checking that we are alive (its --zombie_interval)
            if conn.channel is not None and not conn.channel.closed:
                conn.channel.send_nowait(m.Pong(msg.req_id))
        elif isinstance(msg, m.FileAck):
            if not msg.ok:  # an early refusal of a file still being sent
                conn.file_errors.setdefault(msg.req_id, msg.error)
        elif isinstance(msg, m.Error):
            log.warning("node %s: %s: %s", conn.node.ip_addr, msg.code, msg.message)
        else:
            log.debug("node %s sent unexpected %s", conn.node.ip_addr, type(msg).__name__)

    def _on_pulse(self, conn: _NodeConn, msg: m.Pulse) -> None:
        node = conn.node
        node.avail_info = DispyNodeAvailInfo.from_mapping(msg.avail_info)
        node.avail_cpus = msg.avail_cpus
        node.update_time = time.time()
        self.plugins.hook.dispy_pulse_received(node=node, pulse=dict(msg.avail_info, busy=msg.busy,
                                                                     avail_cpus=msg.avail_cpus))
        if node.avail_info is not None:
            self._notify_cluster(NodeStatus.AvailInfo, node, None)

    def _on_result(self, conn: _NodeConn, msg: m.JobResult) -> None:
        job = conn.running.pop(msg.job_uid, None)
        if job is None:
            return
        node = conn.node
        node.busy -= 1
        assert conn.channel is not None
        try:
            job.result = conn.channel.session.loads(msg.result) if msg.result else None
        except (DispyError, Exception) as exc:  # a result class missing on the client, for example
            job.result = None
            job.exception = f"cannot load result: {exc}"
        if self._pkg.kind == "program":
            job.stdout, job.stderr = msg.stdout, msg.stderr
        else:
            job.stdout = msg.stdout.decode("utf-8", "replace")
            job.stderr = msg.stderr.decode("utf-8", "replace")
        if msg.exception:
            job.exception = msg.exception
        now = time.time()
        job.start_time = msg.start_time or job.start_time
        job.end_time = msg.end_time or now
        node.update_time = now
        node.jobs_done += 1
        node.cpu_time += max(0.0, (msg.end_time - msg.start_time)) if msg.end_time else 0.0
        try:
            status = JobStatus(msg.status)
        except ValueError:
            status = JobStatus.Terminated
        self._job_final(job, status)
        self._after_job(conn)

    def _after_job(self, conn: _NodeConn) -> None:
        if conn.drained is not None and not conn.running:
            conn.drained.set()  # a close waits for this node's last job
        self._dispatch()

    def _on_provisional(self, conn: _NodeConn, msg: m.JobProvisional) -> None:
        job = conn.running.get(msg.job_uid)
        if job is None or conn.channel is None:
            return
        try:
            job.result = conn.channel.session.loads(msg.result)
        except Exception as exc:
            log.warning("job %s: cannot load provisional result: %s", job.id, exc)
            return
        previous = job.status
        job.status = JobStatus.ProvisionalResult
        self._notify_job(job, previous)
        job.status = JobStatus.Running

    def _on_refused(self, conn: _NodeConn, msg: m.JobRefused) -> None:
        job = conn.running.pop(msg.job_uid, None)
        if job is None:
            return
        conn.node.busy -= 1
        log.debug("node %s refused job %s: %s", conn.node.ip_addr, job.id, msg.reason)
        if msg.reason == "no free CPU":  # someone else uses some of its CPUs; learn from it
            conn.node.cpus = max(1, min(conn.node.cpus, conn.node.busy // PIPELINE))
        job.status = JobStatus.Created
        (conn.pinned if job._pinned else self._pending).appendleft(job)
        self._after_job(conn)

    def _on_job_file(self, conn: _NodeConn, msg: m.JobFile) -> None:
        """A job's ``dispy_send_file``: saved under the current directory, never outside it."""
        try:
            target = save_job_file(os.getcwd(), msg.relpath, msg.data, self.max_file_size)
        except (DispyError, OSError, ValueError) as exc:
            log.error("file %r sent by job %s from node %s refused: %s", msg.relpath, msg.job_uid,
                      conn.node.ip_addr, exc)
            return
        log.debug("saved %s (%d bytes) from node %s", target, len(msg.data), conn.node.ip_addr)

    async def _cancel(self, uid: int) -> int:
        job = self._jobs.get(uid)
        if job is None or job.status in FINAL_JOB_STATES:
            return -1
        queues: list[Any] = [self._pending, self._parked] + [c.pinned for c in self._nodes.values()]
        for queue in queues:
            if job in queue:
                queue.remove(job)
                job.exception = "Cancelled"
                self._job_final(job, JobStatus.Cancelled)
                return 0
        conn = self._nodes.get(job._node_key or "")
        if conn is None or conn.channel is None or job._uid not in conn.running:
            return -1
        await conn.channel.send(m.JobCancel(self.comp_id, job._uid))
        if job._prefetched:  # the node answers at once for a job still waiting there: report it done
            deadline = time.monotonic() + self.config.msg_timeout
            while not job.finished and job._prefetched and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        return 0

    def _cancel_running(self, conn: _NodeConn, reason: str) -> None:
        """Jobs whose node is told to terminate them: Cancelled now (the node will not report them)."""
        for job in list(conn.running.values()):
            conn.running.pop(job._uid, None)
            conn.node.busy -= 1
            job.exception = f"Cancelled ({reason})"
            self._job_final(job, JobStatus.Cancelled)
        if conn.drained is not None:
            conn.drained.set()

    def _job_final(self, job: DispyJob, status: JobStatus) -> None:
        previous = job.status
        job.status = status
        if job.end_time is None:
            job.end_time = time.time()
        self._notify_job(job, previous)
        job._finish()
        with self._all_done:
            if self._jobs.pop(job._uid, None) is not None:
                self._unfinished -= 1
            if self._unfinished == 0:
                self._all_done.notify_all()

    # ------------------------------------------------------------------ notifications
    def _notify_job(self, job: DispyJob, previous: int | None) -> None:
        self.plugins.hook.dispy_job_status(job=job, previous=previous)
        if self._callbacks is None:
            return
        seen: Any = job
        if job.status == JobStatus.ProvisionalResult:
            seen = copy.copy(job)  # the callback sees this provisional value even after later ones arrive
        if self.job_status is not None and job.status not in (JobStatus.Created, JobStatus.Running):
            self._callbacks.post(self.job_status, seen)
        if self.cluster_status is not None:
            conn = self._nodes.get(job._node_key or "")
            node = None
            if conn is not None:
                node = conn.node
                if conn.channel is not None:
                    node.tx, node.rx = conn.channel.tx_bytes, conn.channel.rx_bytes
            self._callbacks.post(self.cluster_status, job.status, node, seen)

    def _node_status(self, status: NodeStatus, node: DispyNode) -> None:
        self.plugins.hook.dispy_node_status(node=node, previous=None)
        self._notify_cluster(status, node, None)

    def _notify_cluster(self, status: int, node: DispyNode, job: DispyJob | None) -> None:
        if self._callbacks is not None and self.cluster_status is not None:
            self._callbacks.post(self.cluster_status, status, node, job)

    async def _shutdown(self, terminate: bool) -> None:
        if terminate:
            for queue in [self._pending, self._parked] + [c.pinned for c in self._nodes.values()]:
                for job in list(queue):
                    job.exception = "Cancelled (cluster closed)"
                    self._job_final(job, JobStatus.Cancelled)
                queue.clear()
            for conn in self._nodes.values():
                self._cancel_running(conn, "cluster closed")
        closers = []
        for conn in list(self._nodes.values()):
            if conn.state in (READY, CLOSING):
                self._queue_op(conn, functools.partial(self._close_op, conn, True, terminate))
                assert conn.op is not None
                closers.append(conn.op)
            else:
                closers.append(self._spawn(self._release(conn, notify=False, reason="cluster closed")))
        if closers:
            await asyncio.wait(closers, timeout=self.setup_timeout + self.config.msg_timeout)
        for task in list(self._tasks):
            task.cancel()

    # ================================================================== helpers
    def _spawn(self, coro: Any, on_done: Any = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)
        return task


def _capacity(conn: _NodeConn) -> int:
    """Jobs to keep in flight on a node: PIPELINE per CPU, unless set_node_cpus lowered the CPUs below
    what the node granted (the node would start waiting jobs on the CPUs we gave up)."""
    cpus = conn.node.cpus
    return cpus * PIPELINE if cpus >= conn.max_cpus else cpus


def _public_config() -> Any:
    """``dispy.config`` (imported late: ``dispy`` imports this module)."""
    try:
        import dispy.config as public_config

        return public_config
    except ImportError:
        return None


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} T"
