"""The node server: accepts authenticated clients, hosts their computations, runs their jobs.

It never runs user code and never loads user data: computations and jobs go to the executor
(child processes), arguments and results pass through as opaque bytes.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil

from dispy_core import __version__
from dispy_core.channel import Channel, _fmt
from dispy_core.config import Config
from dispy_core.errors import ConfigError, DispyError, ExecutionError, ProtocolError, SetupError, UnsafePathError
from dispy_core.interfaces import ByteStream, ComputationSpec, JobExecutor, JobOutcome, Listener
from dispy_core.node.service import ServiceState, ServiceWindow, minute_of_day
from dispy_core.paths import check_relpath, safe_join
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.status import JobStatus

log = logging.getLogger("dispy.node")

FILE_CHUNK = 4 << 20
REFUSAL_DELAY = 1.0
MAX_JOBS_PER_PROCESS = 100_000
"""Default bound on a client's ``jobs_per_process`` (node config ``executor.max_jobs_per_process``)."""
"""Seconds a node that accepts no jobs (stopped, outside its service window, quitting) holds a refusal:
the client re-queues a refused job at once, so this bounds the refusals to one per job per second."""


@dataclass
class NodeOptions:
    """What ``dispynode`` is started with (see ``dispy_core.node.cli``)."""

    host: str = ""
    port: int = 9701
    cpus: int = 0
    name: str = ""
    dest_path_prefix: str = ""
    secret: str = field(default="", repr=False)
    admin_secret: str = field(default="", repr=False)
    """Kept for admin operations (dispyadmin, a later release); never logged."""
    max_file_size: int = 0
    msg_timeout: float = 10.0
    clean: bool = False
    serve: int = 0
    """Computations to serve before quitting; 0 = no limit."""
    zombie_interval: float = 0.0
    """Minutes a client's connection may stay silent before the client is presumed dead; 0 = never."""
    client_shutdown: bool = False
    force_cleanup: bool = False
    init_file: str = ""
    """Absolute path of the ``--init`` file, run by each computation's host process (never by the node)."""
    service: ServiceWindow = field(default_factory=ServiceWindow)


@dataclass
class HostedComputation:
    comp_id: str
    name: str
    channel: Channel
    work_dir: Path
    cleanup_files: bool
    cpus: int = 0
    ready: bool = False
    closing: bool = False
    queued: collections.deque[tuple[int, m.JobSubmit]] = field(default_factory=collections.deque)
    """Jobs accepted while every CPU is busy (at most ``cpus`` of them): each starts the moment a CPU
    frees, without waiting a round trip to the client. That keeps CPUs busy between jobs."""
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

    def __init__(self, options: NodeOptions, config: Config | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.options = options
        self.config = config or Config(role="node")
        self.plugins = DispyPluginManager(self.config)
        self.transport = self.plugins.make_transport("tcp")
        self.serializer = self.plugins.make_serializer(self.config.serializer)
        self.executor: JobExecutor = self.plugins.make_executor()
        self.cpus = resolve_cpus(options.cpus)
        limit = self.config.get("executor.max_jobs_per_process", MAX_JOBS_PER_PROCESS)
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"executor.max_jobs_per_process must be an integer of at least 1, not {limit!r}")
        self.max_jobs_per_process = limit  # 1: every job in a fresh process, whatever clients ask
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
        self.address: tuple[str, int] = (self.host, options.port)
        self.accepting = True  # the console's stop / start
        self.service_state = ServiceState.OPEN
        self.quitting = False
        self.clock: Callable[[], datetime] = clock or datetime.now
        self._cap = self.cpus  # CPUs usable by new jobs: 0 while not accepting (one comparison per submit)
        self._served = 0
        self._closing = 0
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pulsing: set[Channel] = set()
        self._arrivals = itertools.count()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        self.dest_path_prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.options.clean:
            self._clean_prefix()
        psutil.cpu_percent(interval=None)  # prime the CPU meter
        if self.options.service.active:
            self.apply_service_state()  # a window already closed refuses the very first job
        self.listener = await self.transport.listen(self.host, self.options.port, self._serve)
        host, port = self.address = self.listener.address
        tls = " with TLS" if self.config.certfile else ""
        log.info("dispynode %s serving %d CPUs at %s%s (executor %s, files under %s)", self.name, self.cpus,
                 _fmt((host, port)), tls, self.executor.name, self.dest_path_prefix)
        if self.options.service.active:
            self._spawn(self._service_loop())
        if self.options.zombie_interval > 0:
            self._spawn(self._zombie_loop(self.options.zombie_interval * 60.0))
        if self.options.init_file:
            log.info("--init %s runs in each computation's host process, before its setup",
                     self.options.init_file)
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
        """Stop now: running jobs are terminated (SIGTERM, the console's ``exit``)."""
        self._stopped.set()

    def request_quit(self, why: str = "") -> None:
        """Stop after the running jobs (console ``quit``, ``--serve``, ``dispynode_shutdown()``)."""
        if self.quitting:
            return
        self.quitting = True
        self._update_cap()
        log.info("dispynode %s quits after its %d running jobs%s", self.name, self.busy, f" ({why})" if why else "")
        self._maybe_quit()

    def _maybe_quit(self) -> None:
        if self.quitting and self.busy == 0 and self._closing == 0 and not self._stopped.is_set():
            self._spawn(self._quit_when_flushed())

    async def _quit_when_flushed(self) -> None:
        await asyncio.sleep(0.05)  # let the last results and replies, already queued, go out first
        if self.busy == 0 and self._closing == 0:
            self.request_stop()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # ------------------------------------------------------------------ what may run
    def _update_cap(self) -> None:
        open_ = self.accepting and not self.quitting and self.service_state is ServiceState.OPEN
        self._cap = self.cpus if open_ else 0
        if not hasattr(self, "computations"):
            return  # still in __init__
        if self._cap == 0:
            for comp in list(self.computations.values()):
                self._drop_queued(comp, self.not_accepting_reason() or "node not accepting jobs")
        else:
            self._start_queued()

    @property
    def avail_cpus(self) -> int:
        return max(0, self._cap - self.busy)

    def not_accepting_reason(self) -> str:
        if self.quitting:
            return "node is shutting down"
        if self.service_state is not ServiceState.OPEN:
            return f"node is outside its service window ({self.service_state.value})"
        if not self.accepting:
            return "node was stopped by its operator"
        return ""

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        self._update_cap()
        log.info("dispynode %s %s new jobs", self.name, "accepts" if accepting else "accepts no")

    def set_cpus(self, requested: int) -> int:
        """Serve ``requested`` CPUs (0 = all, negative = all but); ValueError if impossible."""
        self.cpus = resolve_cpus(requested)
        self._update_cap()
        log.info("dispynode %s now serves %d CPUs", self.name, self.cpus)
        return self.cpus

    def apply_service_state(self) -> ServiceState:
        """Follow the service window at the clock's current time; at its end, terminate running jobs."""
        now = self.clock()
        state = self.options.service.state_at(minute_of_day(now.hour, now.minute, now.second))
        if state is not self.service_state:
            log.info("dispynode %s service window: %s", self.name, state.value)
            self.service_state = state
            self._update_cap()
            if state is ServiceState.ENDED:
                self._terminate_running("the node's service window ended")
        return state

    def _terminate_running(self, why: str) -> None:
        for comp in list(self.computations.values()):
            for uid in list(comp.running):
                log.info("terminating job %s of %s: %s", uid, comp.name, why)
                self._spawn(self.executor.cancel(comp.comp_id, uid, grace=0.0))

    async def _service_loop(self) -> None:
        window = self.options.service
        while not self._stopped.is_set():
            state_time = self.clock()
            wait = window.minutes_to_next_change(minute_of_day(state_time.hour, state_time.minute,
                                                               state_time.second))
            # re-check at least every 30 s: the wall clock may jump (NTP, suspend)
            await asyncio.sleep(min(30.0, 0.05 + 60.0 * wait) if wait is not None else 30.0)
            self.apply_service_state()

    # ------------------------------------------------------------------ dead clients
    async def _zombie_loop(self, limit: float) -> None:
        """Close what a client left when its connection has been silent ``limit`` s (no frame received);
        at half that, ping it, so a client that answers pings stays alive while idle."""
        period = max(0.05, min(limit / 4.0, 30.0))
        loop = asyncio.get_running_loop()
        seen: dict[Channel, tuple[int, float, bool]] = {}  # rx_bytes, since when, pinged
        while not self._stopped.is_set():
            await asyncio.sleep(period)
            now = loop.time()
            for channel in list(self.channels):
                rx = channel.rx_bytes
                last = seen.get(channel)
                if last is None or last[0] != rx:
                    seen[channel] = (rx, now, False)
                    continue
                silent = now - last[1]
                if silent >= limit:
                    seen.pop(channel, None)
                    self._spawn(self._drop_zombie(channel, silent))
                elif silent >= limit / 2 and not last[2] and not channel.closed:
                    seen[channel] = (rx, last[1], True)
                    self._spawn(self._send_quietly(channel, m.Ping(channel.next_req_id())))
            for channel in [c for c in seen if c not in self.channels]:
                del seen[channel]

    async def _drop_zombie(self, channel: Channel, silent: float) -> None:
        comps = [c for c in self.computations.values() if c.channel is channel]
        log.warning("client %s silent for %.1f s (zombie_interval %g min): presumed dead; closing %s",
                    _fmt(channel.peer), silent, self.options.zombie_interval,
                    ", ".join(c.name for c in comps) or "its connection")
        for comp in comps:
            await self._close_computation(comp, terminate=True)
        await channel.close("client presumed dead (zombie_interval)")

    async def _send_quietly(self, channel: Channel, msg: m.Message) -> None:
        try:
            await channel.send(msg)
        except (DispyError, OSError):
            pass

    # ------------------------------------------------------------------ console operations
    def release(self) -> list[str]:
        """Free the node from its clients: close every computation (terminating its jobs) and the
        clients' connections; returns the computations' names."""
        names = []
        for comp in list(self.computations.values()):
            names.append(f"{comp.name} ({_fmt(comp.channel.peer)})")
            self._spawn(self._close_computation(comp, terminate=True))
        for channel in list(self.channels):
            self._spawn(channel.close("released by the node's operator"))
        return names

    def status_lines(self) -> list[str]:
        total = os.cpu_count() or 1
        state = "accepting jobs" if self._cap else f"not accepting jobs: {self.not_accepting_reason()}"
        lines = [f"dispynode {self.name} at {_fmt(self.address)}: {self.cpus} of {total} CPUs served, "
                 f"{self.busy} busy, {self.jobs_done} jobs done; {state}"]
        if self.options.service.active:
            lines.append(f"  service window: {self.service_state.value}")
        if not self.computations:
            lines.append("  no computations")
        for comp in self.computations.values():
            client = _fmt(comp.channel.peer) + (" (connection closed)" if comp.channel.closed else "")
            lines.append(f"  computation {comp.name} ({comp.comp_id}) from client {client}: "
                         f"{len(comp.running)} running, {comp.jobs_done} done")
        if self.options.serve:
            lines.append(f"  computations served: {self._served} of {self.options.serve}")
        return lines

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
        channel.session.blob_views = True  # arguments, code and files pass through to the host or a file
        self.channels.add(channel)
        try:
            await channel.run(lambda msg: self._handle(channel, msg))
        finally:
            self.channels.discard(channel)
            for comp in [c for c in self.computations.values() if c.channel is channel and not self.stopped]:
                log.warning("client %s of computation %s went away; terminating its jobs",
                            _fmt(channel.peer), comp.name)
                self._spawn(self._close_computation(comp, terminate=True))

    def _handle(self, channel: Channel, msg: m.Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            channel.send_nowait(m.Error("unexpected", f"node does not accept {type(msg).__name__}",
                                             getattr(msg, "req_id", 0)))
            return
        try:
            handler(self, channel, msg)
        except Exception as exc:  # a message the checks above let through must not take the node down
            log.exception("handling %s from %s failed", type(msg).__name__, _fmt(channel.peer))
            self._spawn(self._reply_error(channel, getattr(msg, "req_id", 0), "bad-request",
                                          f"node could not handle {type(msg).__name__}: {exc}"))

    async def _reply_error(self, channel: Channel, req_id: int, code: str, text: str) -> None:
        if not channel.closed:
            await self._send_quietly(channel, m.Error(code, text, req_id))

    # ------------------------------------------------------------------ node info
    def _on_info(self, channel: Channel, msg: m.NodeInfoRequest) -> None:
        info = m.NodeInfo(req_id=msg.req_id, name=self.name, ip_addr=self.host, cpus=self.cpus,
                          avail_cpus=self.avail_cpus, platform=platform.platform(),
                          python=".".join(map(str, sys.version_info[:3])), executor=self.executor.name,
                          serializers=[self.serializer.name], avail_info=avail_info(self.dest_path_prefix))
        channel.send_nowait(info)

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
                await channel.send(m.Pulse(busy=self.busy, avail_cpus=self.avail_cpus,
                                           avail_info=self.pulse_fields()))
        except (DispyError, OSError):
            pass
        finally:
            self._pulsing.discard(channel)

    def _on_ping(self, channel: Channel, msg: m.Ping) -> None:
        channel.send_nowait(m.Pong(msg.req_id))

    def _on_pong(self, channel: Channel, msg: m.Pong) -> None:
        """A client's answer to our liveness ping: receiving it was the point."""

    # ------------------------------------------------------------------ computations
    def _on_open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        try:
            if self.quitting or self._stopped.is_set():
                raise ExecutionError(f"node {self.name} is shutting down")
            if self.options.serve and self._served >= self.options.serve:
                raise ExecutionError(f"node {self.name} has served the {self.options.serve} computations it "
                                     f"was started for (--serve) and takes no more")
            if msg.comp_id in self.computations:
                raise ExecutionError(f"computation {msg.comp_id} is already open on this node")
            check_relpath(msg.comp_id)
            if msg.dest_path:
                work_dir = safe_join(self.dest_path_prefix, msg.dest_path)
            else:
                work_dir = self.dest_path_prefix / msg.comp_id
            work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (DispyError, OSError, ValueError) as exc:
            channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False, error=str(exc)))
            return
        comp = HostedComputation(msg.comp_id, msg.name, channel, work_dir,
                                 cleanup_files=msg.cleanup_files or self.options.force_cleanup)
        comp.cpus = min(self.cpus, msg.cpus) if msg.cpus > 0 else self.cpus
        comp.spec_kwargs = dict(
            comp_id=msg.comp_id, name=msg.name, kind=msg.kind, work_dir=work_dir,
            serializer=self.serializer.name, code=msg.code, source=msg.source, code_name=msg.code_name,
            program=msg.program, py_version=tuple(msg.py_version[:2]) if msg.py_version else (0, 0),
            depends_code=msg.depends_code, setup=msg.setup, cleanup=msg.cleanup, setup_args=msg.setup_args,
            node_name=self.name, node_ip_addr=self.host, setup_timeout=msg.setup_timeout,
            extra=self._executor_extra(msg.options))
        self.computations[msg.comp_id] = comp
        self._served += 1
        interval = msg.options.get("pulse_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0 \
                and channel not in self._pulsing:
            self._pulsing.add(channel)
            self._spawn(self._pulse_loop(channel, max(0.1, float(interval))))
        log.info("computation %s (%s) from %s opened in %s", msg.name, msg.comp_id, _fmt(channel.peer), work_dir)
        channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, True, cpus=comp.cpus,
                                                    dest_path=str(work_dir)))

    def _executor_extra(self, options: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {k: options[k] for k in ("source_complete", "source_modules") if k in options}
        if self.options.init_file:
            extra["init_file"] = self.options.init_file
        if self.options.max_file_size:
            extra["max_file_size"] = self.options.max_file_size  # dispy_send_file refuses larger files
        wanted = options.get("jobs_per_process", 1)
        if type(wanted) is int and wanted > 1:
            extra["jobs_per_process"] = min(wanted, self.max_jobs_per_process)
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
            await self._send_quietly(comp.channel, m.ComputationReady(req_id, comp.comp_id, False, error=str(exc)))
            self._check_served()
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
        if self.computations.get(comp.comp_id) is not comp or comp.closing:
            return
        comp.closing = True  # no new jobs; results of running ones still reach the client
        self._drop_queued(comp, "computation closing")
        self._closing += 1
        try:
            if comp.ready:
                try:
                    await self.executor.close(comp.comp_id, terminate=terminate)
                except (DispyError, OSError) as exc:
                    log.warning("closing computation %s: %s", comp.name, exc)
            self.computations.pop(comp.comp_id, None)
            self._remove_files(comp)
        finally:
            self._closing -= 1
        for uid in list(comp.running):  # jobs the executor never reported: free their CPUs
            comp.running.discard(uid)
            self.busy -= 1
        log.info("computation %s (%s) closed after %d jobs", comp.name, comp.comp_id, comp.jobs_done)
        self._check_served()
        self._maybe_quit()

    def _check_served(self) -> None:
        serve = self.options.serve
        if serve and self._served >= serve and not self.computations and not self._closing:
            self.request_quit(f"served {serve} computation{'s' if serve > 1 else ''}")

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
            channel.send_nowait(m.FileAck(msg.req_id, False, str(exc)))
            return
        if ack:
            channel.send_nowait(m.FileAck(msg.req_id, True))

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
        if comp is None or comp.channel is not channel or not comp.ready or comp.closing:
            channel.send_nowait(m.JobRefused(msg.comp_id, msg.job_uid, "computation is not ready here"))
            return
        if self.busy >= self._cap or len(comp.running) >= comp.cpus:
            if self._cap > 0 and len(comp.queued) < comp.cpus:
                comp.queued.append((next(self._arrivals), msg))
                return
            self._refuse(channel, msg)
            return
        self._start(comp, msg)

    def _start(self, comp: HostedComputation, msg: m.JobSubmit) -> None:
        self.busy += 1
        comp.running.add(msg.job_uid)
        submit_nowait = getattr(self.executor, "submit_nowait", None)
        if submit_nowait is None:
            self._spawn(self._submit(comp, msg))
            return
        try:
            submit_nowait(comp.comp_id, msg.job_uid, msg.args)  # no task per job on the hot path
        except (DispyError, OSError) as exc:
            self._submit_failed(comp, msg, exc)

    def _start_queued(self) -> None:
        """Start waiting jobs while CPUs are free, the oldest first across every computation (a CPU freed
        by one computation may be the one another computation's job waits for)."""
        while self.busy < self._cap:
            ready = [c for c in self.computations.values()
                     if c.queued and not c.closing and len(c.running) < c.cpus]
            if not ready:
                return
            chosen = min(ready, key=lambda c: c.queued[0][0])
            _, msg = chosen.queued.popleft()
            self._start(chosen, msg)
            chosen.channel.send_nowait(m.JobStarted(msg.comp_id, msg.job_uid, time.time()))

    def _drop_queued(self, comp: HostedComputation, reason: str) -> None:
        """Jobs accepted but not started: back to the client as refused, so it schedules them again."""
        while comp.queued:
            _, msg = comp.queued.popleft()
            comp.channel.send_nowait(m.JobRefused(msg.comp_id, msg.job_uid, reason))

    def _refuse(self, channel: Channel, msg: m.JobSubmit) -> None:
        reason = self.not_accepting_reason() if self._cap == 0 else ""
        refusal = m.JobRefused(msg.comp_id, msg.job_uid, reason or "no free CPU")
        if reason:
            log.debug("job %s of %s refused: %s", msg.job_uid, msg.comp_id, reason)
            self._spawn(self._send_later(channel, refusal, REFUSAL_DELAY))
        else:
            channel.send_nowait(refusal)

    async def _send_later(self, channel: Channel, msg: m.Message, delay: float) -> None:
        await asyncio.sleep(delay)
        if not channel.closed:
            await self._send_quietly(channel, msg)

    async def _submit(self, comp: HostedComputation, msg: m.JobSubmit) -> None:
        try:
            await self.executor.submit(comp.comp_id, msg.job_uid, msg.args)
        except (DispyError, OSError) as exc:
            self._submit_failed(comp, msg, exc)

    def _submit_failed(self, comp: HostedComputation, msg: m.JobSubmit, exc: Exception) -> None:
        now = time.time()
        self._job_done(comp.comp_id, msg.job_uid, JobOutcome(
            status=JobStatus.Terminated, exception=f"node could not start the job: {exc}",
            result=self._none_result, start_time=now, end_time=now))

    def _on_cancel(self, channel: Channel, msg: m.JobCancel) -> None:
        comp = self.computations.get(msg.comp_id)
        if comp is None or comp.channel is not channel:
            return
        if msg.job_uid in comp.running:
            self._spawn(self.executor.cancel(msg.comp_id, msg.job_uid))
            return
        for queued in comp.queued:
            if queued[1].job_uid == msg.job_uid:
                comp.queued.remove(queued)
                now = time.time()
                channel.send_nowait(m.JobResult(msg.comp_id, msg.job_uid, int(JobStatus.Cancelled),
                                                self._none_result, exception="Cancelled", start_time=now,
                                                end_time=now))
                return

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
        channel = comp.channel
        channel.hold()  # the result and the start of the job queued behind it: one write
        try:
            if not channel.closed:
                channel.send_nowait(m.JobResult(
                    comp_id, job_uid, int(outcome.status), outcome.result, outcome.stdout, outcome.stderr,
                    outcome.exception, outcome.start_time, outcome.end_time))
            self._start_queued()
        finally:
            channel.flush()
        if self.quitting:
            self._maybe_quit()

    def _job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        """A job's ``dispy_send_file``: forwarded within ``--max_file_size`` only."""
        limit = self.options.max_file_size
        if limit and len(data) > limit:
            log.warning("file %r of %d bytes from job %s of %s not sent: above this node's max_file_size of "
                        "%d bytes", relpath, len(data), job_uid, comp_id, limit)
            return
        self._send_to_owner(comp_id, m.JobFile(comp_id, job_uid, relpath, data))

    def _client_shutdown(self, comp_id: str) -> None:
        comp = self.computations.get(comp_id)
        name = comp.name if comp is not None else comp_id
        if not self.options.client_shutdown:
            log.warning("computation %s called dispynode_shutdown(), but this node was not started with "
                        "--client_shutdown; ignored", name)
            return
        self.request_quit(f"computation {name} called dispynode_shutdown()")

    def _send_to_owner(self, comp_id: str, msg: m.Message) -> None:
        comp = self.computations.get(comp_id)
        if comp is not None and not comp.channel.closed:
            comp.channel.send_nowait(msg)

    _handlers: dict[type[m.Message], Any] = {
        m.NodeInfoRequest: _on_info,
        m.Ping: _on_ping,
        m.Pong: _on_pong,
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
        self.server._job_file(comp_id, job_uid, relpath, data)

    def node_shutdown(self, comp_id: str) -> None:
        """The computation's setup, cleanup or a job called ``dispynode_shutdown()`` (optional event)."""
        self.server._client_shutdown(comp_id)

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.server._job_done(comp_id, job_uid, outcome)
