"""The node server: accepts authenticated clients, hosts their computations, runs their jobs.

It never runs user code and never loads user data: computations and jobs go to the executor
(child processes), arguments and results pass through as opaque bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from dispy_core import __version__
from dispy_core.channel import Channel, _fmt
from dispy_core.config import Config
from dispy_core.errors import DispyError, ExecutionError, ProtocolError, SetupError, UnsafePathError
from dispy_core.interfaces import ByteStream, ComputationSpec, JobExecutor, JobOutcome, Listener
from dispy_core.paths import check_relpath, safe_join
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.status import JobStatus

log = logging.getLogger("dispy.node")

FILE_CHUNK = 4 << 20


@dataclass
class NodeOptions:
    """What ``dispynode`` is started with (see ``dispy_core.node.cli``)."""

    host: str = ""
    port: int = 9701
    cpus: int = 0
    name: str = ""
    dest_path_prefix: str = ""
    secret: str = ""
    max_file_size: int = 0
    msg_timeout: float = 10.0
    clean: bool = False


@dataclass
class HostedComputation:
    comp_id: str
    name: str
    channel: Channel
    work_dir: Path
    cleanup_files: bool
    cpus: int = 0
    ready: bool = False
    running: set[int] = field(default_factory=set)
    job_files: dict[int, list[Path]] = field(default_factory=dict)
    open_files: dict[str, tuple[IO[bytes], int, int]] = field(default_factory=dict)
    spec_kwargs: dict[str, Any] = field(default_factory=dict)
    jobs_done: int = 0


def resolve_cpus(requested: int) -> int:
    total = os.cpu_count() or 1
    if requested == 0:
        return total
    if requested < 0:
        if total + requested < 1:
            raise ValueError(f"--cpus {requested} leaves no CPU of the {total} this machine has")
        return total + requested
    if requested > total:
        raise ValueError(f"--cpus {requested} is more than the {total} CPUs this machine has")
    return requested


def default_host() -> str:
    """The address other machines most likely reach us at; loopback when there is nothing else."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # safe: connect() on UDP sends no packet, it only picks a route
            addr = str(probe.getsockname()[0])
            if not addr.startswith("0."):
                return addr
    except OSError:
        pass
    return "127.0.0.1"


def avail_info(path: Path) -> dict[str, Any]:
    """Availability the client's ``DispyNodeAvailInfo`` carries: free CPU %, memory, disk, free swap %."""
    try:
        disk = shutil.disk_usage(path).free
    except OSError:
        disk = 0
    return {
        "cpu": 100.0 - psutil.cpu_percent(interval=None),
        "memory": psutil.virtual_memory().available,
        "disk": disk,
        "swap": 100.0 - psutil.swap_memory().percent,
    }


class NodeServer:
    """One dispynode: a listener, its clients' channels, and the executor that runs jobs."""

    def __init__(self, options: NodeOptions, config: Config | None = None) -> None:
        self.options = options
        self.config = config or Config(role="node")
        self.plugins = DispyPluginManager(self.config)
        self.transport = self.plugins.make_transport("tcp")
        self.serializer = self.plugins.make_serializer(self.config.serializer)
        # Job processes build the serializer from its class (no plugin machinery there: smaller, cheaper forks).
        cls = type(self.serializer)
        self._serializer_class = f"{cls.__module__}:{cls.__qualname__}"
        self.executor: JobExecutor = self.plugins.make_executor()
        self.cpus = resolve_cpus(options.cpus)
        self.name = options.name or socket.gethostname()
        self.host = options.host or default_host()
        prefix = options.dest_path_prefix or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"dispy-node-{os.getuid() if hasattr(os, 'getuid') else 0}")
        self.dest_path_prefix = Path(prefix).resolve()
        self.busy = 0
        self.jobs_done = 0
        self.computations: dict[str, HostedComputation] = {}
        self.channels: set[Channel] = set()
        self.listener: Listener | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pulsing: set[Channel] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        self.dest_path_prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.options.clean:
            self._clean_prefix()
        psutil.cpu_percent(interval=None)  # prime the CPU meter
        self.listener = await self.transport.listen(self.host, self.options.port, self._serve)
        host, port = self.listener.address
        tls = " with TLS" if self.config.certfile else ""
        log.info("dispynode %s serving %d CPUs at %s%s (executor %s, files under %s)", self.name, self.cpus,
                 _fmt((host, port)), tls, self.executor.name, self.dest_path_prefix)
        return host, port

    def _clean_prefix(self) -> None:
        for child in self.dest_path_prefix.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        log.info("cleaned %s", self.dest_path_prefix)

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Stop accepting, end every job and computation, leave no process behind."""
        self._stopped.set()
        if self.listener is not None:
            await self.listener.close()
        for channel in list(self.channels):
            await channel.close("node stopping")
        await self.executor.shutdown()
        for comp in list(self.computations.values()):
            self._remove_files(comp)
        self.computations.clear()
        for task in list(self._tasks):
            task.cancel()
        log.info("dispynode %s stopped", self.name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ connections
    async def _serve(self, stream: ByteStream) -> None:
        try:
            channel = await Channel.accept(
                stream, secret=self.options.secret, serializers={self.serializer.name: self.serializer},
                serializer=self.serializer.name, timeout=self.options.msg_timeout, name=self.name,
                software=f"neodispy {__version__}")
        except (ProtocolError, DispyError, OSError) as exc:
            log.warning("refused connection from %s: %s", _fmt(stream.peer), exc)
            return
        log.debug("client %s authenticated", _fmt(channel.peer))
        self.channels.add(channel)
        try:
            await channel.run(lambda msg: self._handle(channel, msg))
        finally:
            self.channels.discard(channel)
            for comp in [c for c in self.computations.values() if c.channel is channel]:
                log.warning("client %s of computation %s went away; terminating its jobs",
                            _fmt(channel.peer), comp.name)
                self._spawn(self._close_computation(comp, terminate=True))

    def _handle(self, channel: Channel, msg: m.Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._spawn(channel.send(m.Error("unexpected", f"node does not accept {type(msg).__name__}",
                                             getattr(msg, "req_id", 0))))
            return
        handler(self, channel, msg)

    async def _reply_error(self, channel: Channel, req_id: int, code: str, text: str) -> None:
        if not channel.closed:
            await channel.send(m.Error(code, text, req_id))

    # ------------------------------------------------------------------ node info
    def _on_info(self, channel: Channel, msg: m.NodeInfoRequest) -> None:
        info = m.NodeInfo(req_id=msg.req_id, name=self.name, ip_addr=self.host, cpus=self.cpus,
                          avail_cpus=self.cpus - self.busy, platform=platform.platform(),
                          python=".".join(map(str, sys.version_info[:3])), executor=self.executor.name,
                          serializers=[self.serializer.name], avail_info=avail_info(self.dest_path_prefix))
        self._spawn(channel.send(info))

    def pulse_fields(self) -> dict[str, Any]:
        """What each pulse reports: availability plus whatever ``dispy_pulse`` plugins add."""
        fields = avail_info(self.dest_path_prefix)
        for extra in self.plugins.hook.dispy_pulse(node=self):
            if isinstance(extra, dict):
                fields.update(extra)
        return fields

    async def _pulse_loop(self, channel: Channel, interval: float) -> None:
        try:
            while not channel.closed and not self._stopped.is_set():
                await asyncio.sleep(interval)
                if channel.closed:
                    break
                await channel.send(m.Pulse(busy=self.busy, avail_cpus=self.cpus - self.busy,
                                           avail_info=self.pulse_fields()))
        except (DispyError, OSError):
            pass
        finally:
            self._pulsing.discard(channel)

    def _on_ping(self, channel: Channel, msg: m.Ping) -> None:
        self._spawn(channel.send(m.Pong(msg.req_id)))

    # ------------------------------------------------------------------ computations
    def _on_open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        try:
            if msg.comp_id in self.computations:
                raise ExecutionError(f"computation {msg.comp_id} is already open on this node")
            check_relpath(msg.comp_id)
            if msg.dest_path:
                work_dir = safe_join(self.dest_path_prefix, msg.dest_path)
            else:
                work_dir = self.dest_path_prefix / msg.comp_id
            work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (DispyError, OSError, ValueError) as exc:
            self._spawn(channel.send(m.ComputationReady(msg.req_id, msg.comp_id, False, error=str(exc))))
            return
        comp = HostedComputation(msg.comp_id, msg.name, channel, work_dir, cleanup_files=msg.cleanup_files)
        comp.cpus = min(self.cpus, msg.cpus) if msg.cpus > 0 else self.cpus
        comp.spec_kwargs = dict(
            comp_id=msg.comp_id, name=msg.name, kind=msg.kind, work_dir=work_dir,
            serializer=self.serializer.name, code=msg.code, source=msg.source, code_name=msg.code_name,
            program=msg.program, py_version=tuple(msg.py_version[:2]) if msg.py_version else (0, 0),
            depends_code=msg.depends_code, setup=msg.setup, cleanup=msg.cleanup, setup_args=msg.setup_args,
            node_name=self.name, node_ip_addr=self.host, setup_timeout=msg.setup_timeout,
            extra=self._executor_extra(msg.options))
        self.computations[msg.comp_id] = comp
        interval = msg.options.get("pulse_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0 \
                and channel not in self._pulsing:
            self._pulsing.add(channel)
            self._spawn(self._pulse_loop(channel, max(0.1, float(interval))))
        log.info("computation %s (%s) from %s opened in %s", msg.name, msg.comp_id, _fmt(channel.peer), work_dir)
        self._spawn(channel.send(m.ComputationReady(msg.req_id, msg.comp_id, True, cpus=comp.cpus,
                                                    dest_path=str(work_dir))))

    def _executor_extra(self, options: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {k: options[k] for k in ("source_complete", "source_modules") if k in options}
        extra["serializer_class"] = self._serializer_class
        return extra

    def _on_setup(self, channel: Channel, msg: m.ComputationSetup) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None:
            self._spawn(self._setup(comp, msg.req_id))

    async def _setup(self, comp: HostedComputation, req_id: int) -> None:
        spec = ComputationSpec(**comp.spec_kwargs)
        try:
            await self.executor.open(spec, _Events(self))
        except (SetupError, ExecutionError, OSError) as exc:
            log.warning("setup of computation %s failed: %s", comp.name, exc)
            self.computations.pop(comp.comp_id, None)
            self._remove_files(comp)
            await comp.channel.send(m.ComputationReady(req_id, comp.comp_id, False, error=str(exc)))
            return
        comp.ready = True
        await comp.channel.send(m.ComputationReady(req_id, comp.comp_id, True, cpus=comp.cpus,
                                                   dest_path=str(comp.work_dir)))

    def _on_close(self, channel: Channel, msg: m.ComputationClose) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None:
            self._spawn(self._close_and_reply(comp, msg))

    async def _close_and_reply(self, comp: HostedComputation, msg: m.ComputationClose) -> None:
        await self._close_computation(comp, msg.terminate)
        if not comp.channel.closed:
            await comp.channel.send(m.ComputationClosed(msg.req_id, comp.comp_id))

    async def _close_computation(self, comp: HostedComputation, terminate: bool) -> None:
        if self.computations.pop(comp.comp_id, None) is None:
            return
        if comp.ready:
            try:
                await self.executor.close(comp.comp_id, terminate=terminate)
            except (DispyError, OSError) as exc:
                log.warning("closing computation %s: %s", comp.name, exc)
        self._remove_files(comp)
        log.info("computation %s (%s) closed after %d jobs", comp.name, comp.comp_id, comp.jobs_done)

    def _remove_files(self, comp: HostedComputation) -> None:
        for handle, _, _ in comp.open_files.values():
            handle.close()
        comp.open_files.clear()
        if comp.cleanup_files and comp.work_dir.is_relative_to(self.dest_path_prefix):
            shutil.rmtree(comp.work_dir, ignore_errors=True)

    def _owned(self, channel: Channel, comp_id: str, req_id: int) -> HostedComputation | None:
        comp = self.computations.get(comp_id)
        if comp is None or comp.channel is not channel:
            self._spawn(self._reply_error(channel, req_id, "unknown-computation",
                                          f"no computation {comp_id!r} of yours on node {self.name}"))
            return None
        return comp

    # ------------------------------------------------------------------ files
    def _on_file(self, channel: Channel, msg: m.FileChunk) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is None:
            return
        try:
            ack = self._write_chunk(comp, msg)
        except (UnsafePathError, OSError, ValueError) as exc:
            entry = comp.open_files.pop(msg.relpath, None)
            if entry is not None:
                entry[0].close()
            log.warning("file %r for %s refused: %s", msg.relpath, comp.name, exc)
            self._spawn(channel.send(m.FileAck(msg.req_id, False, str(exc))))
            return
        if ack:
            self._spawn(channel.send(m.FileAck(msg.req_id, True)))

    def _write_chunk(self, comp: HostedComputation, msg: m.FileChunk) -> bool:
        limit = self.options.max_file_size
        if limit and msg.size > limit:
            raise ValueError(f"file {msg.relpath!r} is {msg.size} bytes, above this node's "
                             f"max_file_size of {limit} bytes")
        if msg.size < 0 or msg.offset < 0 or msg.offset + len(msg.data) > msg.size:
            raise ValueError(f"file {msg.relpath!r}: chunk outside the declared size {msg.size}")
        entry = comp.open_files.get(msg.relpath)
        if msg.offset == 0:
            if entry is not None:
                entry[0].close()
            target = safe_join(comp.work_dir, msg.relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle: IO[bytes] = open(target, "wb")  # noqa: SIM115 - kept open across chunks
            entry = (handle, msg.size, 0)
            if msg.job_uid:
                comp.job_files.setdefault(msg.job_uid, []).append(target)
        elif entry is None or entry[2] != msg.offset:
            raise ValueError(f"file {msg.relpath!r}: chunk at offset {msg.offset} out of order")
        handle, size, written = entry
        handle.write(msg.data)
        written += len(msg.data)
        if msg.last:
            handle.close()
            comp.open_files.pop(msg.relpath, None)
            if written != size:
                raise ValueError(f"file {msg.relpath!r}: got {written} bytes, declared {size}")
            os.chmod(handle.name, msg.mode & 0o755 | 0o600)
            return True
        comp.open_files[msg.relpath] = (handle, size, written)
        return False

    # ------------------------------------------------------------------ jobs
    def _on_submit(self, channel: Channel, msg: m.JobSubmit) -> None:
        comp = self.computations.get(msg.comp_id)
        if comp is None or comp.channel is not channel or not comp.ready:
            self._spawn(channel.send(m.JobRefused(msg.comp_id, msg.job_uid, "computation is not ready here")))
            return
        if self.busy >= self.cpus or len(comp.running) >= comp.cpus:
            self._spawn(channel.send(m.JobRefused(msg.comp_id, msg.job_uid, "no free CPU")))
            return
        self.busy += 1
        comp.running.add(msg.job_uid)
        self._spawn(self._submit(comp, msg))

    async def _submit(self, comp: HostedComputation, msg: m.JobSubmit) -> None:
        try:
            await self.executor.submit(comp.comp_id, msg.job_uid, msg.args)
        except (DispyError, OSError) as exc:
            self._job_done(comp.comp_id, msg.job_uid, JobOutcome(
                status=JobStatus.Terminated, exception=f"node could not start the job: {exc}",
                result=self._none_result, start_time=time.time(), end_time=time.time()))

    def _on_cancel(self, channel: Channel, msg: m.JobCancel) -> None:
        comp = self.computations.get(msg.comp_id)
        if comp is not None and comp.channel is channel and msg.job_uid in comp.running:
            self._spawn(self.executor.cancel(msg.comp_id, msg.job_uid))

    @property
    def _none_result(self) -> bytes:
        return bytes(self.serializer.dumps(None))

    def _job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        comp = self.computations.get(comp_id)
        if comp is None or job_uid not in comp.running:
            return
        comp.running.discard(job_uid)
        self.busy -= 1
        comp.jobs_done += 1
        self.jobs_done += 1
        for path in comp.job_files.pop(job_uid, []):
            path.unlink(missing_ok=True)
        if not comp.channel.closed:
            self._spawn(comp.channel.send(m.JobResult(
                comp_id, job_uid, int(outcome.status), outcome.result, outcome.stdout, outcome.stderr,
                outcome.exception, outcome.start_time, outcome.end_time)))

    def _send_to_owner(self, comp_id: str, msg: m.Message) -> None:
        comp = self.computations.get(comp_id)
        if comp is not None and not comp.channel.closed:
            self._spawn(comp.channel.send(msg))

    _handlers: dict[type[m.Message], Any] = {
        m.NodeInfoRequest: _on_info,
        m.Ping: _on_ping,
        m.ComputationOpen: _on_open,
        m.ComputationSetup: _on_setup,
        m.ComputationClose: _on_close,
        m.FileChunk: _on_file,
        m.JobSubmit: _on_submit,
        m.JobCancel: _on_cancel,
    }


class _Events:
    """The executor's callbacks into the server (on the server's loop)."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None:
        """Not forwarded: the client marks a job Running when it dispatches it, and the result carries
        the real start time (one frame per job saved on the hot path)."""

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None:
        self.server._send_to_owner(comp_id, m.JobProvisional(comp_id, job_uid, result))

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        self.server._send_to_owner(comp_id, m.JobFile(comp_id, job_uid, relpath, data))

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.server._job_done(comp_id, job_uid, outcome)
