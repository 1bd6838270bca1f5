"""One client computation's side towards the nodes: the client's own machinery, relaying instead of loading.

The scheduler drives the real nodes exactly as a ``JobCluster`` does: one ``ClusterState`` with the scheduler
plugin, ``NodeLife`` for the node connections and ``ClientDriver`` to carry out the state's instructions.
:class:`Backend` is the JobCluster-like object those expect, built from the client's ``ComputationOpen`` and
the files it sent; :class:`RelayDriver` is the driver that, where a client would load a result and tell the
program, sends the node's message on to the client as it came (arguments and results stay opaque bytes:
the scheduler never loads user code or data).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from dispy_core.client.allocation import NodeEntry, choose_alloc
from dispy_core.client.computation import FileDepend, Package
from dispy_core.client.connections import READY, NodeConn
from dispy_core.client.driver import ClientDriver
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode, NodeAllocate
from dispy_core.computation import Computation
from dispy_core.config import Config
from dispy_core.errors import DispyError
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev
from dispy_core.state.arbiter import Gate
from dispy_core.state.cluster import ALLOWED_FAILURES, ClusterState
from dispy_core.status import FINAL_JOB_STATES, JobStatus

if TYPE_CHECKING:
    from dispy_core.scheduler.arbiter import Arbiter

log = logging.getLogger("dispy.scheduler")

__all__ = ["SCHEDULER_OPTIONS", "Backend", "BackendObserver", "NodeSide", "RelayDriver"]

SCHEDULER_OPTIONS = ("reentrant", "allowed_failures", "exclusive", "recover", "pulse_interval", "nodes")
"""Computation options meant for the scheduler, not the nodes: taken out of the record before it goes on.
``recover`` is the client's recover file: the scheduler, the client's one node, keeps the results until the
client acknowledges them (``front.py``), so the nodes need not (a node lost is the scheduler's to recover from,
by ``reentrant``); ``pulse_interval`` is the scheduler's own; ``nodes`` is the client's ``nodes=`` (see
:class:`ClientNodes`)."""


class ClientNodes:
    """A client's ``SharedJobCluster(nodes=...)``: which of the scheduler's nodes its computation uses, and how many
    of their CPUs. The rules are JobCluster's (``client/allocation.py``: entries naming a node's address or name,
    then wildcards); a node that matches none is not used for this computation. Only ``host``, ``port`` and
    ``cpus`` travel: the scheduler never runs a client's code (an ``allocate`` override) nor loads its objects."""

    def __init__(self, wanted: Any) -> None:
        if not isinstance(wanted, list) or not wanted:
            raise ValueError(f"nodes must be a non-empty list, not {wanted!r}")
        self.allocs: list[NodeAllocate] = []
        for item in wanted:
            if not isinstance(item, dict) or set(item) - {"host", "port", "cpus"}:
                raise ValueError(f"a node must be {{host, port, cpus}}, not {item!r}")
            port, cpus = item.get("port"), item.get("cpus", 0)
            self.allocs.append(NodeAllocate(item.get("host"), port=port or None, cpus=cpus))  # type: ignore[arg-type]
        self.entries = [NodeEntry(alloc, plain=False) for alloc in self.allocs]
        self.refused: list[str] = []
        """The scheduler's nodes this computation does not use (``addr:port (name)``), for the client's error."""

    async def resolve(self) -> None:
        """Host names the client gave match the addresses they resolve to here, as well as a node's name."""
        loop = asyncio.get_running_loop()
        for alloc in list(self.allocs):
            if alloc.is_pattern or _is_address(alloc.host):
                continue
            try:
                infos = await loop.getaddrinfo(alloc.host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                continue
            for addr in dict.fromkeys(info[4][0] for info in infos):
                self.entries.append(NodeEntry(NodeAllocate(str(addr), port=alloc.port, cpus=alloc.cpus), plain=False))

    def cpus_for(self, ip_addr: str, port: int, name: str, cpus: int) -> int:
        """The node's CPUs this computation uses: 0 if the client's nodes do not name it."""
        alloc = choose_alloc(self.entries, ip_addr, port, name, None)
        if alloc is None:
            self.refused.append(f"{ip_addr}:{port}" + (f" ({name})" if name else ""))
            log.info("node %s:%d (%s) is not in the client's nodes; not used for its computation", ip_addr, port, name)
            return 0
        return alloc.allocate(None, ip_addr, name, cpus)

    def __str__(self) -> str:
        return ", ".join(f"{a.host}" + (f":{a.port}" if a.port else "") + (f" cpus={a.cpus}" if a.cpus else "")
                         for a in self.allocs)


class SchedulerNode(NodeAllocate):
    """One of the scheduler's nodes (or its ``*``), as a computation's back end looks for it: its ``allocate``
    asks the client's ``nodes=`` (when given) how much of the node the computation uses."""

    def __init__(self, host: str, port: int, wanted: ClientNodes | None, seen: dict[str, int]) -> None:
        super().__init__(host, port=port)
        self.wanted = wanted
        self.seen = seen

    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None,
                 platform: str = "") -> int:
        self.seen[f"{ip_addr}:{self.port}"] = cpus  # the node's own count, for set_node_cpus (--cooperative)
        if self.wanted is None:
            return cpus
        return self.wanted.cpus_for(ip_addr, self.port or 0, name, cpus)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass
class NodeSide:
    """What every computation's back end shares: which nodes, and how to reach and authenticate to them."""

    config: Config
    plugins: DispyPluginManager
    transport: Any
    serializer: Any
    secret: str = field(repr=False)
    node_port: int
    client_port: int
    """The UDP port discovery listens on for nodes' announcements (the scheduler's base port)."""
    nodes: list[tuple[str, int | None]]
    """``-n`` hosts (port None: ``node_port``); none: every node discovery finds."""
    hosts: list[str] = field(default_factory=list)
    ipv4_udp_multicast: bool = False
    multicast_groups: dict[str, str] = field(default_factory=dict)
    pulse_interval: float | None = None
    max_payload: int = 1 << 30
    cleanup_nodes: bool = False
    ping_interval: float | None = None
    """Seconds between discovery pings for nodes while a computation is open (only with discovery: no ``-n``)."""
    node_cpus: dict[str, int] = field(default_factory=dict)
    """``addr:port`` -> the CPUs the node offered when a computation was last set up on it."""
    cpu_limits: dict[str, int] = field(default_factory=dict)
    """``addr:port`` -> CPUs every computation uses there, set by a client (``--cooperative``)."""

    def entries(self, wanted: ClientNodes | None = None) -> list[NodeEntry]:
        """Fresh entries for one computation (NodeLife keeps state in them); ``wanted``: the client's ``nodes=``,
        which picks among these (a client cannot make the scheduler use a node it would not use)."""
        if not self.nodes:
            return [NodeEntry(SchedulerNode("*", self.node_port, wanted, self.node_cpus), plain=True)]
        return [NodeEntry(SchedulerNode(host, port or self.node_port, wanted, self.node_cpus), plain=True)
                for host, port in self.nodes]


class BackendObserver(Protocol):
    """What follows the scheduler's computations (the web monitor of ``--httpd``): told of each on the
    scheduler's loop, from its set-up (before its first job) to its close."""

    def opened(self, backend: Backend) -> None:
        """``backend`` was made for a client's computation."""

    def job_notice(self, backend: Backend, notice: ev.NotifyJob, job: DispyJob) -> None:
        """A job of ``backend`` changed status (``notice``); ``job`` is still known to the back end."""

    def closed(self, backend: Backend) -> None:
        """``backend`` closed: its jobs are off the nodes."""


class Backend:
    """The JobCluster-shaped object ``ClientDriver`` and ``NodeLife`` drive, for one client computation."""

    def __init__(self, side: NodeSide, opened: m.ComputationOpen, files: list[FileDepend],
                 to_client: Callable[[m.Message], Any], job_ended: Callable[[int], None],
                 arbiter: Arbiter | None = None, observers: list[BackendObserver] | None = None) -> None:
        options = dict(opened.options)
        own = {key: options.pop(key) for key in SCHEDULER_OPTIONS if key in options}
        record = dataclasses.replace(Computation.of(opened), options=options)
        self.side = side
        self.config = side.config
        self.plugins = side.plugins
        self.transport = side.transport
        self.serializer = side.serializer
        # One scheduler plugin per computation (it learns that computation's job times), shown only the
        # slots the arbiter grants when an arbiter shares the nodes between computations.
        self.gate = Gate(side.plugins.make_scheduler())
        self.scheduler = self.gate if arbiter is not None else self.gate.inner
        self.arbiter = arbiter
        self.discovery = side.plugins.make_discovery()
        self.secret = side.secret
        self.node_port = side.node_port
        self.client_port = side.client_port
        self.host = side.hosts
        self.ipv4_udp_multicast = side.ipv4_udp_multicast
        self.multicast_groups = dict(side.multicast_groups)
        self.pulse_interval = side.pulse_interval
        self.max_payload = side.max_payload
        self.max_file_size = 0
        self.first_node_timeout: float | None = None
        self.wanted = ClientNodes(own["nodes"]) if own.get("nodes") is not None else None
        self._entries = side.entries(self.wanted)
        self._pkg = Package(record, files)
        self._cleanup_files = opened.cleanup_files or side.cleanup_nodes
        self.dest_path = opened.dest_path or None
        self.setup_timeout = opened.setup_timeout
        self.comp_id = opened.comp_id
        self.name = opened.name
        self.reentrant = own.get("reentrant") is True
        failures = own.get("allowed_failures")
        self.allowed_failures = failures if type(failures) is int and failures >= 1 else ALLOWED_FAILURES
        self.exclusive = own.get("exclusive") is True
        self.job_status = self.cluster_status = None
        self._callbacks = None
        self._recover_log = None
        self._closed = False
        self._start_time = time.time()
        self._discovered = asyncio.Event()
        self._driver = RelayDriver(self, to_client, job_ended)
        # The node's CPUs are shared with other computations: a job sent to one may wait there behind theirs,
        # so it is Running (and the client told) only when the node says it started.
        self._driver.state.starts_reported = True
        self._life = self._driver.life
        self.observers = observers if observers is not None else []
        if arbiter is not None:
            arbiter.join(self, self.exclusive, self._start_time)
        for observer in self.observers:
            observer.opened(self)

    @property
    def state(self) -> ClusterState:
        return self._driver.state

    def limit_node(self, node_id: str, cpus: int) -> bool:
        """Use ``cpus`` of the node (never more than it granted this computation); False: not set up there."""
        if node_id not in self.state.nodes:
            return False
        self._driver.feed(ev.NodeCpus(node_id, cpus))
        return True

    def node_keys(self) -> dict[str, str]:
        """``addr:port`` -> name of each node this computation is set up on now."""
        return {key: conn.node.name for key, conn in self._life.nodes.items() if conn.state == READY}

    def redispatch(self) -> None:
        """The arbiter granted this computation more slots: send what waits."""
        self._driver.feed(ev.Redispatch(time.time()))

    # ------------------------------------------------------------------ what the scheduler's front calls
    async def start(self) -> int:
        """Contact the nodes (named ones, or those discovery finds) and set the computation up on each; the
        CPUs ready for it once every named node was tried."""
        self._driver.spawn(self._driver.tick())
        if self.wanted is not None:
            await self.wanted.resolve()
        await asyncio.gather(self._life.discover(self._entries), self._life.search(self._entries))
        self._discovered.set()
        self._driver.feed(ev.DiscoveryDone())
        if self.side.ping_interval and self._life.searcher is not None:
            self._driver.spawn(self._ping_loop(self.side.ping_interval))
        return self.ready_cpus()

    async def _ping_loop(self, interval: float) -> None:
        """``--ping_interval``: ping for nodes again and again, so that one whose answer or announcement was lost
        (UDP) is found all the same; ends with the computation."""
        while not self._closed:
            await asyncio.sleep(interval)
            searcher = self._life.searcher
            if self._closed or searcher is None:
                return
            searcher.ping()

    def ready_cpus(self) -> int:
        return sum(conn.max_cpus for conn in self._life.nodes.values() if conn.state == READY)

    def failures(self) -> str:
        reasons = [f"{key}: {reason}" for key, reason in self._life.failed.items()]
        if self.wanted is not None and self.wanted.refused:
            reasons.append(f"the client's nodes ({self.wanted}) match none of the scheduler's: "
                           f"{', '.join(self.wanted.refused)}")
        return "; ".join(reasons) or "no node answered"

    def unmatched(self) -> bool:
        """The client's ``nodes=`` left out every node the scheduler found (none ready, none failed)."""
        return self.wanted is not None and bool(self.wanted.refused) and not self._life.failed

    def submit(self, uid: int, args: bytes, files: list[tuple[str, str]]) -> None:
        job = DispyJob(uid, (), {})
        job._payload, job._files = args, files
        job.submit_time = time.time()
        self._driver.submit(job)

    async def send_file(self, dep: FileDepend) -> str:
        """A file the client sent after setup (``send_file``): to every node the computation is set up on now,
        and with the computation's files to any that sets it up later. "" when every node took it, else why
        not (per node)."""
        self._pkg.files.append(dep)
        ready = [conn for conn in self._life.nodes.values() if conn.state == READY and conn.channel is not None]

        async def one(conn: NodeConn) -> str:
            assert conn.channel is not None
            try:
                await self._life.send_depend(conn, conn.channel, dep, 0)
            except (DispyError, OSError) as exc:
                return f"{conn.node.key}: {exc}"
            return ""

        refusals = [why for why in await asyncio.gather(*(one(conn) for conn in ready)) if why]
        return "; ".join(refusals)

    def has_job(self, uid: int) -> bool:
        return uid in self._driver.jobs

    async def cancel(self, uid: int) -> None:
        await self._driver.cancel(uid)

    async def close(self, terminate: bool) -> None:
        """Queued jobs end Cancelled; the computation is closed on every node (never hangs on one)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._driver.shutdown(terminate)
        finally:
            if self.arbiter is not None:  # its jobs are off the nodes now: their slots go to the others
                self.arbiter.leave(self.comp_id)
            for observer in self.observers:
                observer.closed(self)

    # ------------------------------------------------------------------ what the driver calls back (JobCluster's)
    def _computation_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"announce_starts": True}  # see RelayDriver: Running only once a node starts it
        if self.pulse_interval:
            options["pulse_interval"] = self.pulse_interval
        return options

    def _notify_cluster(self, status: int, node: DispyNode, job: Any) -> None:
        """No program here to tell; the log says what happened to nodes."""

    def _job_done(self, job: DispyJob) -> None:
        """Never called: :class:`RelayDriver` ends jobs itself."""


class RelayDriver(ClientDriver):
    """A ClientDriver that sends each job's news on to the client instead of loading it and telling a program."""

    def __init__(self, backend: Backend, to_client: Callable[[m.Message], Any],
                 job_ended: Callable[[int], None]) -> None:
        super().__init__(cast(Any, backend))
        self.backend = backend
        self.to_client = to_client
        self.job_ended = job_ended

    def feed(self, event: ev.ClusterEvent) -> list[ev.ClusterInstruction]:
        """As the client's, and then the arbiter hears that this computation changed."""
        instructions = super().feed(event)
        if isinstance(event, ev.NodeReady):  # a CPU limit a client set (--cooperative) holds for every computation
            limit = self.backend.side.cpu_limits.get(event.node_id)
            if limit is not None:
                instructions += super().feed(ev.NodeCpus(event.node_id, limit))
        if self.backend.arbiter is not None:
            self.backend.arbiter.changed()
        return instructions

    def _notify_job(self, notice: ev.NotifyJob) -> None:
        job = self.jobs.get(notice.uid)
        if job is None:
            return
        for observer in self.backend.observers:
            observer.job_notice(self.backend, notice, job)
        outcome = notice.outcome
        if notice.status == JobStatus.Running:  # the client marks it Running too (if it waits there)
            conn = self.life.nodes.get(job._node_key or "")
            if conn is not None:
                self._bind(job, conn)
            self.to_client(m.JobStarted(self.comp_id, notice.uid, time.time(), ip_addr=job.ip_addr or ""))
        elif notice.status == JobStatus.ProvisionalResult and isinstance(outcome, m.JobProvisional):
            self.to_client(outcome)
        if notice.status not in FINAL_JOB_STATES:
            return
        del self.jobs[notice.uid]
        self.to_client(outcome if isinstance(outcome, m.JobResult) else self._ended_here(notice))
        self.job_ended(notice.uid)

    def _ended_here(self, notice: ev.NotifyJob) -> m.JobResult:
        """A job that ended at the scheduler (cancelled while queued, abandoned): a result saying so, with the
        same status (the client reads Abandoned from its "node" as given up there); the reason says why."""
        status = JobStatus(notice.status)
        wire = status if status in (JobStatus.Cancelled, JobStatus.Terminated, JobStatus.Abandoned) \
            else JobStatus.Terminated
        now = time.time()
        reason = notice.reason or status.name
        text = reason if status == wire else f"{status.name} at dispyscheduler: {reason}"
        return m.JobResult(self.comp_id, notice.uid, int(wire), exception=text, start_time=now, end_time=now)

    def _on_job_file(self, conn: NodeConn, msg: m.JobFile) -> None:
        self.to_client(msg)  # the client saves it, within its own max_file_size
