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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from dispy_core import __version__
from dispy_core.channel import Channel, _fmt
from dispy_core.config import Config
from dispy_core.errors import ConfigError, DispyError, ProtocolError
from dispy_core.interfaces import ByteStream, JobExecutor, Listener
from dispy_core.node import announce
from dispy_core.node.admin import NodeAdmin
from dispy_core.node.computations import ComputationHost, HostedComputation
from dispy_core.node.jobs import JobRunner
from dispy_core.node.kept import KEPT_LIMIT, DiskBudget
from dispy_core.node.liveness import avail_info, pulse_loop, send_quietly, zombie_loop
from dispy_core.node.recovery import Recovery
from dispy_core.node.service import ServiceState, ServiceWindow, minute_of_day
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.protocol.session import MAX_PAYLOAD
from dispy_core.ratelog import Throttled
from dispy_core.state import events as ev
from dispy_core.state.node import NodeState

log = logging.getLogger("dispy.node")

HANDSHAKE_DEADLINE = 5.0
"""Seconds a new connection has to prove the secret (at most ``--msg_timeout``)."""
MAX_UNAUTHENTICATED = 64
"""Connections that may be proving the secret at once (node config ``node.max_unauthenticated``); more are
closed at once: each one costs memory, and a peer that never finishes should not cost more."""
ZOMBIE_INTERVAL = 60.0
"""Minutes a client may stay silent (answering no ping) before it is presumed dead: the original's default."""
MAX_JOBS_PER_PROCESS = 100_000
"""Default bound on a client's ``jobs_per_process`` (node config ``executor.max_jobs_per_process``)."""


@dataclass
class NodeOptions:
    """What ``dispynode`` is started with (see ``dispy_core.node.cli``)."""

    host: str = ""
    """The first of ``hosts`` (empty: every address of the machine)."""
    port: int = 9701
    hosts: list[str] = field(default_factory=list)
    """Addresses to bind (``-i``, repeatable); none: all, IPv4 and IPv6."""
    ext_hosts: list[str] = field(default_factory=list)
    """Addresses to announce instead, paired with ``hosts`` by position (``--ext_host``, for NAT)."""
    discoverable: bool = True
    """Answer discovery pings and announce the node (UDP on the node port)."""
    ipv4_udp_multicast: bool = False
    ping_interval: float | None = None
    """Seconds between announcements while running (None: only at start)."""
    scheduler_nodes: list[str] = field(default_factory=list)
    """``--scheduler_node``: announced to until it connects."""
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
    zombie_interval: float = ZOMBIE_INTERVAL
    """Minutes a client's connection may stay silent before the client is presumed dead; 0 = never."""
    client_shutdown: bool = False
    force_cleanup: bool = False
    init_file: str = ""
    """Absolute path of the ``--init`` file, run by each computation's host process (never by the node)."""
    service: ServiceWindow = field(default_factory=ServiceWindow)


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


class NodeServer:
    """One dispynode: a listener, its clients' channels, and the executor that runs jobs.

    Which job runs when is ``NodeState``'s decision (``self.state``); this class does the I/O: it turns
    messages, executor callbacks and the operator's commands into events and carries out the
    instructions that come back (``_apply``)."""

    def __init__(self, options: NodeOptions, config: Config | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.options = options
        self.config = config or Config(role="node")
        self.plugins = DispyPluginManager(self.config)
        self.transport = self.plugins.make_transport("tcp")
        self.serializer = self.plugins.make_serializer(self.config.serializer)
        self.executor: JobExecutor = self.plugins.make_executor()
        limit = self.config.get("executor.max_jobs_per_process", MAX_JOBS_PER_PROCESS)
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"executor.max_jobs_per_process must be an integer of at least 1, not {limit!r}")
        self.max_jobs_per_process = limit  # 1: every job in a fresh process, whatever clients ask
        self.name = options.name or socket.gethostname()
        self.bind_hosts = list(options.hosts) or ([options.host] if options.host else [])
        self.host = (options.ext_hosts or self.bind_hosts or [self._own_address()])[0]
        """The address this node gives as its own (NodeInfo, jobs' ``dispy_node_ip_addr``)."""
        prefix = options.dest_path_prefix or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"dispy-node-{os.getuid() if hasattr(os, 'getuid') else 0}")
        self.dest_path_prefix = Path(prefix).resolve()
        self.state = NodeState(resolve_cpus(options.cpus))
        self.computations: dict[str, HostedComputation] = {}
        self.channels: set[Channel] = set()
        self.listener: Listener | None = None
        self.listeners: list[Listener] = []
        self.address: tuple[str, int] = (self.host, options.port)
        self.accepting = True  # the console's stop / start
        self.service_state = ServiceState.OPEN
        self.quitting = False
        self.clock: Callable[[], datetime] = clock or datetime.now
        self._served = 0
        self.started_at = time.time()
        self._closing = 0
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pulsing: set[Channel] = set()
        kept_limit = self.config.get("node.kept_results_limit", KEPT_LIMIT)
        if type(kept_limit) is not int or kept_limit < 0:
            raise ConfigError(f"node.kept_results_limit must be a number of bytes (0 or more), not {kept_limit!r}")
        self.kept_budget = DiskBudget(kept_limit)
        self.max_unauthenticated = self.config.get("node.max_unauthenticated", MAX_UNAUTHENTICATED)
        if type(self.max_unauthenticated) is not int or self.max_unauthenticated < 1:
            raise ConfigError(f"node.max_unauthenticated must be an integer of at least 1, not "
                              f"{self.max_unauthenticated!r}")
        self._unauthenticated = 0
        self.only_from: set[str] = set()  # --scheduler_node: the only peers served
        self.max_payload = self.config.get("transport.max_payload", MAX_PAYLOAD)
        if type(self.max_payload) is not int or self.max_payload < 1 << 20:
            raise ConfigError(f"transport.max_payload must be a number of bytes of at least 1 MiB, not "
                              f"{self.max_payload!r}")
        self._refusals = Throttled(log)  # peers that failed the handshake
        self._busy = Throttled(log)  # peers refused because too many are in the handshake
        self.jobs = JobRunner(self)
        self.comps = ComputationHost(self)
        self.recovery = Recovery(self)
        self.admin = NodeAdmin(self)  # dispyadmin's connections (--admin_secret)

    @property
    def cpus(self) -> int:
        return self.state.cpus

    @property
    def busy(self) -> int:
        return self.state.busy

    @property
    def jobs_done(self) -> int:
        return self.state.jobs_done

    @property
    def avail_cpus(self) -> int:
        return self.state.avail_cpus

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        self.dest_path_prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.options.clean:
            self._clean_prefix()
        psutil.cpu_percent(interval=None)  # prime the CPU meter
        if self.options.service.active:
            self.apply_service_state()  # a window already closed refuses the very first job
        if self.options.scheduler_nodes:
            self.only_from.update(await announce.resolve_schedulers(self.options.scheduler_nodes))
            log.info("dispynode %s serves only its scheduler(s): %s", self.name, ", ".join(sorted(self.only_from)))
        port = self.options.port
        self.listeners.clear()
        for bind in self.bind_hosts or [""]:  # "": every address, IPv4 and IPv6
            listener = await self.transport.listen(bind, port, self._serve)
            port = port or listener.address[1]  # the others on the port the first one got
            self.listeners.append(listener)
        self.listener = self.listeners[0]
        host, port = self.address = (self.host, self.listener.address[1])
        tls = " with TLS" if self.config.certfile else ""
        log.info("dispynode %s serving %d CPUs at %s%s (executor %s, files under %s)", self.name, self.cpus,
                 _fmt((host, port)), tls, self.executor.name, self.dest_path_prefix)
        if not self.options.secret:
            log.warning("%s", self.security_note())
        if self.options.service.active:
            self._spawn(self._service_loop())
        if self.options.zombie_interval > 0:
            self._spawn(zombie_loop(self.options.zombie_interval * 60.0, lambda: self.channels, self._stopped,
                                    self._drop_zombie, self._spawn))
        self.recovery.find_orphans()
        self._spawn(self.recovery.expire_loop(self._stopped))
        if self.options.discoverable:
            announce.start_discovery(self, port)
        if self.options.init_file:
            log.info("--init %s runs in each computation's host process, before its setup",
                     self.options.init_file)
        return host, port

    def _own_address(self) -> str:
        """Bound to every address: the routed one, else the first usable one (a host without a default route)."""
        routed = default_host()
        if routed != "127.0.0.1":
            return routed
        return self.served_addresses(0)[0][0] if self.served_addresses(0) else routed

    def security_note(self) -> str:
        """How clients are authenticated here, in words: the start-up WARNING and the console's status."""
        tls = "with TLS" if self.config.certfile else "without TLS"
        if self.options.secret:
            return f"clients must prove the node's secret; connections {tls}"
        user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "?")
        return (f"dispynode {self.name} has NO SECRET: any program that can reach it "
                f"({', '.join(_fmt(a) for a in self.served_addresses(self.address[1]))}) can run code here as user "
                f"{user}. Set a secret with --secret or the DISPY_SECRET environment variable, and use "
                f"TLS (--certfile) on networks you do not trust; connections {tls}")

    def served_addresses(self, port: int) -> list[tuple[str, int]]:
        """Where clients can reach this node (see :func:`announce.served_addresses`)."""
        return announce.served_addresses(self.options.ext_hosts, self.bind_hosts, port)

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
        self._update_capacity()
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

    async def stop(self) -> None:
        """Stop accepting, end every job and computation, leave no process behind."""
        self._stopped.set()
        for listener in self.listeners:
            await listener.close()
        for channel in list(self.channels):
            await channel.close("node stopping")
        await self.executor.shutdown()
        for comp in list(self.computations.values()):
            self._remove_files(comp)
            if comp.kept is not None and (comp.detached_at is None or not comp.kept.on_disk):
                comp.kept.clear()  # a vanished client's kept results stay, for recover_jobs (after a restart)
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

    # ------------------------------------------------------------------ what may run
    def not_accepting_reason(self) -> str:
        if self.quitting:
            return "node is shutting down"
        if self.service_state is not ServiceState.OPEN:
            return f"node is outside its service window ({self.service_state.value})"
        if not self.accepting:
            return "node was stopped by its operator"
        return ""

    def _update_capacity(self) -> None:
        self._apply(self.state.handle(ev.NodeCapacity(self.state.cpus, self.not_accepting_reason(), time.time())))

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        self._update_capacity()
        log.info("dispynode %s %s new jobs", self.name, "accepts" if accepting else "accepts no")

    def set_cpus(self, requested: int) -> int:
        """Serve ``requested`` CPUs (0 = all, negative = all but); ValueError if impossible."""
        cpus = resolve_cpus(requested)
        self._apply(self.state.handle(ev.NodeCapacity(cpus, self.not_accepting_reason(), time.time())))
        log.info("dispynode %s now serves %d CPUs", self.name, self.cpus)
        return self.cpus

    def apply_service_state(self) -> ServiceState:
        """Follow the service window at the clock's current time; at its end, terminate running jobs."""
        now = self.clock()
        state = self.options.service.state_at(minute_of_day(now.hour, now.minute, now.second))
        if state is not self.service_state:
            log.info("dispynode %s service window: %s", self.name, state.value)
            self.service_state = state
            self._update_capacity()
            if state is ServiceState.ENDED:
                self._apply(self.state.handle(ev.TerminateRunning("the node's service window ended")))
        return state

    async def _service_loop(self) -> None:
        window = self.options.service
        while not self._stopped.is_set():
            state_time = self.clock()
            wait = window.minutes_to_next_change(minute_of_day(state_time.hour, state_time.minute,
                                                               state_time.second))
            # re-check at least every 30 s: the wall clock may jump (NTP, suspend)
            await asyncio.sleep(min(30.0, 0.05 + 60.0 * wait) if wait is not None else 30.0)
            self.apply_service_state()

    async def _drop_zombie(self, channel: Channel, silent: float) -> None:
        comps = [c for c in self.computations.values() if c.channel is channel]
        log.warning("client %s silent for %.1f s (zombie_interval %g min): presumed dead; closing %s",
                    _fmt(channel.peer), silent, self.options.zombie_interval,
                    ", ".join(c.name for c in comps) or "its connection")
        for comp in comps:
            await self._close_computation(comp, terminate=True)
        await channel.close("client presumed dead (zombie_interval)")

    # ------------------------------------------------------------------ console operations
    def release(self) -> list[str]:
        """Free the node from its clients: close every computation (terminating its jobs) and the
        clients' connections; returns the computations' names."""
        names = []
        for comp in list(self.computations.values()):
            names.append(f"{comp.name} ({_fmt(comp.channel.peer)})")
            self._spawn(self._close_computation(comp, terminate=True))
        for channel in list(self.channels):  # told so: a client does not come back by itself
            self._spawn(channel.say_farewell_and_close("released by the node's operator", code="released"))
        return names

    # ------------------------------------------------------------------ connections
    async def _serve(self, stream: ByteStream) -> None:
        if self.only_from and stream.peer[0] not in self.only_from:
            await announce.refuse_stranger(stream, self.only_from, self._busy)
            return
        if self._unauthenticated >= self.max_unauthenticated:
            self._busy.warning("refused connection from %s: %d connections are still proving the secret "
                               "(node.max_unauthenticated)", _fmt(stream.peer), self._unauthenticated, key="busy")
            await stream.close()
            return
        self._unauthenticated += 1
        try:
            replayed = await self.admin.intercept(stream, min(self.options.msg_timeout, HANDSHAKE_DEADLINE))
            if replayed is None:  # dispyadmin's connection, served to its end by NodeAdmin
                return
            channel = await Channel.accept(
                replayed, secret=self.options.secret, serializers={self.serializer.name: self.serializer},
                serializer=self.serializer.name, timeout=min(self.options.msg_timeout, HANDSHAKE_DEADLINE),
                name=self.name, software=f"neodispy {__version__}")
        except (ProtocolError, DispyError, OSError) as exc:
            self._refusals.warning("refused connection from %s: %s", _fmt(stream.peer), exc,
                                   key=type(exc).__name__)
            return
        finally:
            self._unauthenticated -= 1
        log.debug("client %s authenticated", _fmt(channel.peer))
        channel.session.max_payload = self.max_payload
        channel.session.blob_views = True  # arguments, code and files pass through to the host or a file
        self.channels.add(channel)
        try:
            await channel.run(lambda msg: self._handle(channel, msg))
        finally:
            self.channels.discard(channel)
            if not self.stopped:
                self.recovery.connection_ended(channel)

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
            await send_quietly(channel, m.Error(code, text, req_id))

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

    def _pulse(self) -> m.Pulse:
        return m.Pulse(busy=self.busy, avail_cpus=self.avail_cpus, avail_info=self.pulse_fields())

    async def _pulse_loop(self, channel: Channel, interval: float) -> None:
        try:
            await pulse_loop(channel, interval, self._pulse, self._stopped)
        finally:
            self._pulsing.discard(channel)

    def _on_ping(self, channel: Channel, msg: m.Ping) -> None:
        channel.send_nowait(m.Pong(msg.req_id))

    def _on_pong(self, channel: Channel, msg: m.Pong) -> None:
        """A client's answer to our liveness ping: receiving it was the point."""

    # ------------------------------------------------------------------ computations (self.comps)
    def _on_open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        self.comps.open(channel, msg)

    def _on_setup(self, channel: Channel, msg: m.ComputationSetup) -> None:
        self.comps.setup(channel, msg)

    def _on_close(self, channel: Channel, msg: m.ComputationClose) -> None:
        if msg.comp_id in self.computations or not self.recovery.close_orphan(channel, msg):
            self.comps.close(channel, msg)

    def _on_file(self, channel: Channel, msg: m.FileChunk) -> None:
        self.comps.file(channel, msg)

    async def _close_computation(self, comp: HostedComputation, terminate: bool) -> None:
        await self.comps.close_computation(comp, terminate)

    def _remove_files(self, comp: HostedComputation) -> None:
        self.comps.remove_files(comp)

    # ------------------------------------------------------------------ jobs (carried out by self.jobs)
    def _on_submit(self, channel: Channel, msg: m.JobSubmit) -> None:
        self.jobs.submit(channel, msg)

    def _on_cancel(self, channel: Channel, msg: m.JobCancel) -> None:
        comp = self.computations.get(msg.comp_id)
        if comp is not None and comp.channel is channel:
            self.jobs.apply(self.state.handle(ev.JobCancelAsked(msg.comp_id, msg.job_uid, time.time())))

    def _on_ack(self, channel: Channel, msg: m.ResultsAck) -> None:
        self.recovery.acknowledged(channel, msg)

    def _on_recover(self, channel: Channel, msg: m.JobsRecover) -> None:
        self.recovery.take_over(channel, msg)

    def _apply(self, instructions: list[ev.NodeInstruction]) -> None:
        self.jobs.apply(instructions)

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
        m.ResultsAck: _on_ack,
        m.JobsRecover: _on_recover,
    }
