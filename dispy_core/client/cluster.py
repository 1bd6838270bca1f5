"""JobCluster: the public, synchronous, thread-safe face of a client; all networking on its loop thread."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any

from dispy_core import __version__
from dispy_core.channel import Channel, RemoteError, _fmt
from dispy_core.client.computation import FileDepend, Package, file_depend, package
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate, to_node_allocate
from dispy_core.client.runtime import CallbackThread, LoopThread
from dispy_core.config import load_config
from dispy_core.errors import ConfigError, DispyError, ProtocolError, SerializationError
from dispy_core.interfaces import NodeLoad
from dispy_core.malloc_tuning import tune_malloc
from dispy_core.paths import safe_join
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.status import FINAL_JOB_STATES, JobStatus, NodeStatus

log = logging.getLogger("dispy")

DEFAULT_DISPY_PORT = 9700
FILE_CHUNK = 4 << 20
_cluster_ids = itertools.count(1)


class _NodeConn:
    """A node this cluster uses: its public DispyNode view plus the channel and queue state."""

    def __init__(self, node: DispyNode, alloc: NodeAllocate) -> None:
        self.node = node
        self.alloc = alloc
        self.channel: Channel | None = None
        self.ready = False
        self.running: dict[int, DispyJob] = {}
        self.pinned: collections.deque[DispyJob] = collections.deque()


class JobCluster:
    """Runs ``computation`` on the given nodes; see the client API reference for every parameter."""

    def __init__(self, computation: Any, nodes: Any = None, depends: list[Any] | None = None,
                 job_status: Any = None, cluster_status: Any = None, host: Any = None, ext_host: Any = None,
                 dispy_port: int | None = None, ipv4_udp_multicast: bool = False, dest_path: str | None = None,
                 loglevel: int = logging.INFO, setup: Any = None, cleanup: Any = True,
                 ping_interval: float | None = None, pulse_interval: float | None = None,
                 reentrant: bool = False, secret: str = "", keyfile: str | None = None,
                 certfile: str | None = None, recover_file: str | None = None, **extra: Any) -> None:
        unknown = set(extra) - {"cafile", "setup_timeout", "msg_timeout", "poll_interval", "plugins"}
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
        self.config = load_config("client", certfile=certfile, keyfile=keyfile, cafile=extra.get("cafile"),
                                  msg_timeout=extra.get("msg_timeout"))
        self.plugins = DispyPluginManager(self.config)
        for plugin in extra.get("plugins") or ():  # extension: plugin objects for this cluster only
            self.plugins.register(plugin)
        self.serializer = self.plugins.make_serializer()
        self.scheduler = self.plugins.make_scheduler()
        self.discovery = self.plugins.make_discovery()
        self.transport = self.plugins.make_transport("tcp")

        self.secret = secret or os.environ.get("DISPY_SECRET", "")
        port_base = dispy_port if dispy_port is not None else _config_port()
        self.node_port = port_base + 1
        if nodes is None:
            env_nodes = os.environ.get("DISPY_NODES", "")
            nodes = [n.strip() for n in env_nodes.split(",") if n.strip()] or ["*"]
        if isinstance(nodes, str | NodeAllocate | dict | tuple):
            nodes = [nodes]
        self._allocs = [to_node_allocate(item, self.node_port) for item in nodes]
        patterns = [a.host for a in self._allocs if a.is_pattern]
        if patterns and len(patterns) == len(self._allocs):
            raise ConfigError(f"nodes {patterns} need discovery by broadcast, which is not implemented yet; "
                              f"list nodes by host name or address (or set DISPY_NODES)")
        self._pkg: Package = package(computation, list(depends or []), setup, cleanup, self.serializer)
        self._cleanup_files = cleanup is not False
        self.dest_path = dest_path
        self.setup_timeout = float(extra.get("setup_timeout", 600.0))
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
        self._closed = False
        self._start_time = time.time()
        self._loop = LoopThread(f"dispy-{next(_cluster_ids)}")
        self._callbacks = CallbackThread("dispy-callbacks") if (job_status or cluster_status) else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._discovered = threading.Event()
        self._parked: list[DispyJob] = []
        self._loop.submit(self._discover(self._allocs))

    # ================================================================== public API
    def submit(self, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job; returns the DispyJob (None if the arguments cannot be serialized)."""
        return self._submit(None, args, kwargs)

    def submit_node(self, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job for one particular node (DispyNode, address or name)."""
        return self._submit(node, args, kwargs)

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        job = self._submit(None, args, kwargs)
        if job is not None:
            job.id = job_id
        return job

    def submit_job_id_node(self, job_id: Any, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        job = self._submit(node, args, kwargs)
        if job is not None:
            job.id = job_id
        return job

    def _submit(self, node: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DispyJob | None:
        if self._closed:
            raise RuntimeError("cluster is closed; create a new one to submit jobs")
        job_depends = kwargs.pop("dispy_job_depends", None) or []
        if self._pkg.kind == "program":
            if kwargs:
                raise TypeError("a program computation takes positional string arguments only")
            args = tuple(str(a) for a in args)
        uid = next(self._uids)
        job = DispyJob(uid, args, kwargs)
        try:
            job._payload = self.serializer.dumps((args, kwargs))
            job._files = [(d.path, d.relpath) for d in (file_depend(os.fspath(p)) for p in job_depends)]
        except (SerializationError, ValueError, TypeError) as exc:
            log.warning("job %s not submitted: %s", uid, exc)
            return None
        job._pinned = self._node_key(node) if node is not None else None
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
        try:
            return self._loop.run(self._cancel(job), timeout=self.config.msg_timeout)
        except (TimeoutError, DispyError):
            return -1

    def close(self, timeout: float | None = None, terminate: bool = False) -> bool:
        """Wait for jobs (up to ``timeout``), cancel the rest if ``terminate``, then release the nodes."""
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

    def status(self) -> dict[str, Any]:
        """Nodes and job counts, as a snapshot."""
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.status == JobStatus.Created)
            running = sum(1 for j in self._jobs.values() if j.status == JobStatus.Running)
        return {"nodes": [c.node for c in self._nodes.values() if c.ready], "pending": pending,
                "running": running, "unfinished": self._unfinished}

    def node_jobs(self, node: Any) -> list[DispyJob]:
        conn = self._nodes.get(self._node_key(node) or "")
        return list(conn.running.values()) if conn else []

    def print_status(self) -> None:
        print(self.format_status())

    def format_status(self) -> str:
        lines = ["", f"{'Node':>24} | {'CPUs':>4} | {'Jobs':>5} | {'Sec/Job':>8} | {'Node Time Sec':>13} | "
                 f"{'Sent':>9} | {'Rcvd':>9}", "-" * 90]
        total_time = 0.0
        total_jobs = 0
        for conn in self._nodes.values():
            node = conn.node
            if conn.channel is not None:
                node.tx, node.rx = conn.channel.tx_bytes, conn.channel.rx_bytes
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

    # ================================================================== loop side: nodes
    async def _discover(self, allocs: list[NodeAllocate]) -> None:
        tasks = []
        for alloc in allocs:
            if alloc.is_pattern:
                continue
            assert alloc.port is not None
            try:
                addresses = await self.discovery.resolve(alloc.host, alloc.port)
            except (ConfigError, OSError) as exc:
                log.error("node %s: %s", alloc.host, exc)
                continue
            for address in addresses:
                key = f"{address.ip_addr}:{address.port}"
                if key in self._nodes:
                    continue
                conn = _NodeConn(DispyNode(address.ip_addr, address.port), alloc)
                self._nodes[key] = conn
                tasks.append(self._start_node(conn))
        await asyncio.gather(*tasks, return_exceptions=True)
        self._discovered.set()
        parked, self._parked = self._parked, []
        for job in parked:
            self._enqueue(job)
        if not any(c.ready for c in self._nodes.values()):
            log.error("cluster %s has no usable node (tried %s); jobs wait until a node is added",
                      self.name, ", ".join(self._nodes) or "none")

    async def _start_node(self, conn: _NodeConn) -> None:
        node = conn.node
        timeout = self.config.msg_timeout
        try:
            channel = await Channel.connect(
                self.transport, node.ip_addr, node.port, secret=self.secret,
                serializers={self.serializer.name: self.serializer}, serializer=self.serializer.name,
                timeout=timeout, name=self.name, software=f"neodispy {__version__}")
        except (ProtocolError, DispyError, OSError) as exc:
            log.error("node %s: cannot use it: %s", _fmt((node.ip_addr, node.port)), exc)
            self._forget(conn)
            return
        conn.channel = channel
        self._spawn(channel.run(lambda msg: self._handle(conn, msg)), on_done=lambda _: self._node_lost(conn))
        try:
            info = await channel.request(m.NodeInfoRequest(channel.next_req_id()), timeout)
            assert isinstance(info, m.NodeInfo)
            node.name, node.platform = info.name, info.platform
            node.avail_info = DispyNodeAvailInfo.from_mapping(info.avail_info)
            cpus = conn.alloc.allocate(self, node.ip_addr, node.name, info.cpus, node.avail_info, info.platform)
            hooked = self.plugins.hook.dispy_allocate(cluster=self, node=node, cpus=cpus)
            cpus = int(hooked if hooked is not None else cpus)
            if cpus <= 0:
                log.info("node %s not used: allocate gave 0 CPUs", node.ip_addr)
                await channel.close("not allocated")
                self._forget(conn)
                return
            await self._open_computation(conn, channel, cpus)
        except (DispyError, OSError, AssertionError) as exc:
            log.error("node %s: could not set up computation %s: %s", node.ip_addr, self.name, exc)
            await channel.close(f"setup failed: {exc}")
            self._forget(conn)
            return
        conn.ready = True
        node.update_time = time.time()
        log.info("node %s (%s) ready with %d CPUs", node.ip_addr, node.name, node.cpus)
        self._notify_cluster(NodeStatus.Initialized, node, None)
        self.plugins.hook.dispy_node_status(node=node, previous=None)
        self._dispatch()

    async def _open_computation(self, conn: _NodeConn, channel: Channel, cpus: int) -> None:
        pkg, timeout = self._pkg, self.config.msg_timeout
        setup_args = self.serializer.dumps(conn.alloc.setup_args) if conn.alloc.setup_args else b""
        reply = await channel.request(m.ComputationOpen(
            channel.next_req_id(), self.comp_id, self.name, pkg.kind, code=pkg.code, source=pkg.source,
            code_name=pkg.code_name, program=pkg.program, py_version=list(sys.version_info[:2]),
            depends_code=pkg.depends_code, setup=pkg.setup, cleanup=pkg.cleanup,
            cleanup_files=self._cleanup_files, setup_args=setup_args, cpus=cpus, dest_path=self.dest_path or "",
            setup_timeout=self.setup_timeout,
            options=self._computation_options()), timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(reply.error)
        files = list(pkg.files) + [file_depend(os.fspath(p)) for p in conn.alloc.depends]
        for dep in files:
            await self._send_file(channel, dep, 0)
        reply = await channel.request(m.ComputationSetup(channel.next_req_id(), self.comp_id),
                                      self.setup_timeout + timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(f"setup failed: {reply.error}")
        conn.node.cpus = min(cpus, reply.cpus) if reply.cpus else cpus
        conn.node.avail_cpus = conn.node.cpus

    def _computation_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.pulse_interval:
            options["pulse_interval"] = self.pulse_interval
        if self._pkg.source_complete:
            options["source_complete"] = True
        if self._pkg.source_modules:
            options["source_modules"] = self._pkg.source_modules
        return options

    async def _send_file(self, channel: Channel, dep: FileDepend, job_uid: int) -> None:
        """Stream a file in chunks; the node acknowledges the last one (or refuses with a reason)."""
        req_id = channel.next_req_id()
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
                        raise DispyError(f"node refused file {dep.relpath!r}: {reply.error}")
                    return
                await channel.send(msg)
                offset += len(data)

    def _forget(self, conn: _NodeConn) -> None:
        self._nodes.pop(conn.node.key, None)

    def _node_lost(self, conn: _NodeConn) -> None:
        """The channel ended: jobs there are abandoned (or requeued when reentrant)."""
        was_ready = conn.ready
        conn.ready = False
        reason = conn.channel.close_reason if conn.channel else "closed"
        if conn.running and not self._closed:
            log.warning("lost node %s (%s) with %d running jobs", conn.node.ip_addr, reason, len(conn.running))
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
        if was_ready:
            self._notify_cluster(NodeStatus.Closed, conn.node, None)
        self._nodes.pop(conn.node.key, None)
        self._dispatch()

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
            while conn.pinned and conn.ready and conn.node.busy < conn.node.cpus:
                self._send_job(conn, conn.pinned.popleft())
        while self._pending:
            loads = [NodeLoad(c.node.key, c.node.cpus, c.node.busy, c.node.jobs_done)
                     for c in self._nodes.values() if c.ready]
            choice = self.scheduler.choose(loads) if loads else None
            if choice is None:
                return
            self._send_job(self._nodes[choice], self._pending.popleft())

    def _send_job(self, conn: _NodeConn, job: DispyJob) -> None:
        assert conn.channel is not None
        conn.node.busy += 1
        conn.running[job._uid] = job
        job._node_key = conn.node.key
        job.ip_addr = conn.node.ip_addr
        job.start_time = time.time()
        previous = job.status
        job.status = JobStatus.Running
        self._notify_job(job, previous)
        self._spawn(self._transmit(conn, conn.channel, job))

    async def _transmit(self, conn: _NodeConn, channel: Channel, job: DispyJob) -> None:
        try:
            for path, _relpath in job._files:
                await self._send_file(channel, file_depend(path), job._uid)
            await channel.send(m.JobSubmit(self.comp_id, job._uid, job._payload,
                                           [relpath for _, relpath in job._files]))
        except (DispyError, OSError) as exc:
            if conn.running.pop(job._uid, None) is not None:
                conn.node.busy -= 1
                job.exception = f"could not send job to {conn.node.ip_addr}: {exc}"
                self._job_final(job, JobStatus.Cancelled)
                self._dispatch()

    def _handle(self, conn: _NodeConn, msg: m.Message) -> None:
        if isinstance(msg, m.JobResult):
            self._on_result(conn, msg)
        elif isinstance(msg, m.JobProvisional):
            self._on_provisional(conn, msg)
        elif isinstance(msg, m.JobRefused):
            self._on_refused(conn, msg)
        elif isinstance(msg, m.JobFile):
            self._on_job_file(conn, msg)
        elif isinstance(msg, m.Pulse):
            self._on_pulse(conn, msg)
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
        conn.node.busy -= 1
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
        job.start_time = msg.start_time or job.start_time
        job.end_time = msg.end_time or time.time()
        conn.node.jobs_done += 1
        conn.node.cpu_time += max(0.0, (msg.end_time - msg.start_time)) if msg.end_time else 0.0
        try:
            status = JobStatus(msg.status)
        except ValueError:
            status = JobStatus.Terminated
        self._job_final(job, status)
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
        if msg.reason == "no free CPU":
            conn.node.cpus = max(1, conn.node.busy)  # someone else uses the rest; learn from it
        job.status = JobStatus.Created
        (conn.pinned if job._pinned else self._pending).appendleft(job)
        self._dispatch()

    def _on_job_file(self, conn: _NodeConn, msg: m.JobFile) -> None:
        try:
            target = safe_join(os.getcwd(), msg.relpath)  # type: ignore[arg-type]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(msg.data)
        except (DispyError, OSError) as exc:
            log.warning("file %r from node %s refused: %s", msg.relpath, conn.node.ip_addr, exc)

    async def _cancel(self, job: DispyJob) -> int:
        if job.status in FINAL_JOB_STATES:
            return -1
        for queue in [self._pending] + [c.pinned for c in self._nodes.values()]:
            if job in queue:
                queue.remove(job)
                job.exception = "Cancelled"
                self._job_final(job, JobStatus.Cancelled)
                return 0
        conn = self._nodes.get(job._node_key or "")
        if conn is None or conn.channel is None or job._uid not in conn.running:
            return -1
        await conn.channel.send(m.JobCancel(self.comp_id, job._uid))
        return 0

    def _job_final(self, job: DispyJob, status: JobStatus) -> None:
        previous = job.status
        job.status = status
        if job.end_time is None:
            job.end_time = time.time()
        self._notify_job(job, previous)
        job._finish()
        with self._all_done:
            self._jobs.pop(job._uid, None)
            self._unfinished -= 1
            if self._unfinished == 0:
                self._all_done.notify_all()

    def _notify_job(self, job: DispyJob, previous: int | None) -> None:
        self.plugins.hook.dispy_job_status(job=job, previous=previous)
        if self._callbacks is None:
            return
        if self.job_status is not None and job.status not in (JobStatus.Created, JobStatus.Running):
            if job.status == JobStatus.ProvisionalResult:
                snapshot = _provisional_view(job)
                self._callbacks.post(self.job_status, snapshot)
            else:
                self._callbacks.post(self.job_status, job)
        if self.cluster_status is not None:
            conn = self._nodes.get(job._node_key or "")
            self._callbacks.post(self.cluster_status, job.status, conn.node if conn else None, job)

    def _notify_cluster(self, status: int, node: DispyNode, job: DispyJob | None) -> None:
        if self._callbacks is not None and self.cluster_status is not None:
            self._callbacks.post(self.cluster_status, status, node, job)

    async def _shutdown(self, terminate: bool) -> None:
        if terminate:
            for job in list(self._pending):
                job.exception = "Cancelled"
                self._job_final(job, JobStatus.Cancelled)
            self._pending.clear()
        closers = [self._close_node(conn, terminate) for conn in list(self._nodes.values())]
        await asyncio.gather(*closers, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    async def _close_node(self, conn: _NodeConn, terminate: bool) -> None:
        channel = conn.channel
        if channel is None or channel.closed:
            return
        try:
            if conn.ready:
                await channel.request(m.ComputationClose(channel.next_req_id(), self.comp_id, terminate),
                                      self.config.msg_timeout + 20)
        except (DispyError, OSError, RemoteError) as exc:
            log.warning("node %s: closing computation: %s", conn.node.ip_addr, exc)
        conn.node.tx, conn.node.rx = channel.tx_bytes, channel.rx_bytes
        conn.ready = False
        await channel.close("cluster closed")

    # ================================================================== helpers
    def _node_key(self, node: Any) -> str | None:
        if isinstance(node, DispyNode):
            return node.key
        if isinstance(node, str):
            for key, conn in list(self._nodes.items()):
                if node in (conn.node.ip_addr, conn.node.name, key):
                    return key
            return f"{node}:{self.node_port}"
        raise ValueError(f"node must be a DispyNode, address or name, not {node!r}")

    def _spawn(self, coro: Any, on_done: Any = None) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)


class _ProvisionalView:
    """What ``job_status`` sees for a provisional result: the job's fields as they were at that moment."""

    def __init__(self, job: DispyJob) -> None:
        self.__dict__.update({k: v for k, v in vars(job).items() if not k.startswith("_")})
        self._job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)


def _provisional_view(job: DispyJob) -> Any:
    return _ProvisionalView(job)


def _config_port() -> int:
    try:
        import dispy.config as public_config

        return int(public_config.DispyPort)
    except (ImportError, AttributeError, ValueError):
        return DEFAULT_DISPY_PORT


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} T"
