"""The life of the client's node connections: find, connect, set up, close, set up again.

A connection goes connecting -> setup -> ready (-> closing -> setup -> ready: resetup) -> closed. Life
operations on one node never interleave (``queue_op``). What each step means for jobs is decided by
``ClusterState``: this module feeds it ``NodeReady``, ``NodeClosing``, ``NodeLost``, ``NodeReleased``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from dispy_core import __version__
from dispy_core.channel import Channel
from dispy_core.client.allocation import NodeEntry, choose_alloc
from dispy_core.client.computation import FileDepend, file_depend
from dispy_core.client.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy_core.client.search import NodeSearch
from dispy_core.client.transfers import stream_file
from dispy_core.errors import AuthenticationError, ConfigError, DispyError, ProtocolError
from dispy_core.interfaces import NodeView
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev
from dispy_core.state.reconnect import Reconnect
from dispy_core.status import NodeStatus

if TYPE_CHECKING:
    from dispy_core.client.driver import ClientDriver

log = logging.getLogger("dispy")

__all__ = ["CLOSED", "CLOSING", "CONNECTING", "READY", "SETUP", "NodeConn", "NodeLife"]

TRANSFERS_PER_NODE = 8
"""Files sent to one node at once (jobs' files go in parallel): well under the node's bound."""
PULSES_MISSED = 5
"""With ``pulse_interval``, a node from which nothing arrives for this many pulses is lost (the original's rule)."""
WARN_FIRST, WARN_MAX = 5.0, 300.0
"""Seconds until the first WARNING that no node is usable yet (after the ERROR at start), and the most
between two; the interval doubles."""
CONNECTING, SETUP, READY, CLOSING, CLOSED = "connecting", "setup", "ready", "closing", "closed"


class NodeConn:
    """A node this cluster talks to: its public DispyNode view plus the channel and life state."""

    def __init__(self, node: DispyNode, via: NodeEntry | None) -> None:
        self.node = node
        self.via = via
        self.alloc: NodeAllocate | None = None
        self.channel: Channel | None = None
        self.state = CONNECTING
        self.allocated = True  # False after deallocate_node: set up, but no new jobs
        self.max_cpus = 0  # CPUs the node granted this computation (set_node_cpus stays within)
        self.setup_args: tuple[Any, ...] = ()
        self.depends: list[Any] = []
        self.drained: asyncio.Event | None = None  # set by CloseNode: the node's jobs are done
        self.op: asyncio.Task[Any] | None = None  # the life operation in progress (start, close, resetup)
        self.file_errors: dict[int, str] = {}  # first refusal of a file transfer, by request id
        self.retry = False  # contacted again after a failure: a new failure is not announced again
        self.transfers = asyncio.Semaphore(TRANSFERS_PER_NODE)
        self.heard = (0, 0.0)  # the channel's rx_bytes, and since when they have not changed


class NodeLife:
    """Every node connection of one cluster, and the operations of the node API."""

    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver
        self.cluster = driver.cluster
        self.nodes: dict[str, NodeConn] = {}
        self.leaving: dict[str, NodeConn] = {}  # dropped now: for the Closed notice of their jobs' state
        self.records: dict[str, DispyNode] = {}  # every node ever set up, for print_status
        self.failed: dict[str, str] = {}  # address -> why the node cannot be used
        self.reconnect = Reconnect()
        self.named: dict[str, NodeEntry] = {}  # nodes the program named (ip:port, or host:port unresolved)
        self.no_node_declared = False
        self._next_warning = (0.0, WARN_FIRST)  # when to say again that no node is usable, and the step
        self.unicast_targets: set[tuple[str, int]] = set()  # named hosts: searches ping them too (relays)
        self.finder = NodeSearch(self)

    # ------------------------------------------------------------------ finding nodes
    async def discover(self, entries: list[NodeEntry]) -> list[NodeConn]:
        """Contact each named host (wildcards are only matched, never contacted); wait until each was tried."""
        conns: list[NodeConn] = []
        for entry in entries:
            alloc = entry.alloc
            if alloc.is_pattern:
                continue
            assert alloc.port is not None
            try:
                addresses = await self.cluster.discovery.resolve(alloc.host, alloc.port)
            except (ConfigError, OSError) as exc:
                key = f"{alloc.host}:{alloc.port}"
                self.named[key] = entry
                self.record_failure(key, str(exc))
                self.reconnect.failed(key, time.time(), str(exc), permanent=True)  # a name that does not resolve
                continue
            for address in addresses:
                key = f"{address.ip_addr}:{address.port}"
                self.named[key] = entry
                self.unicast_targets.add((address.ip_addr, address.port))
                self.reconnect.forget(key)  # named again: tried now
                conn = self.nodes.get(key)
                if conn is not None and conn.state == CLOSING and conn.op is not None:
                    await asyncio.wait([conn.op])  # a close in progress: then start afresh
                    conn = self.nodes.get(key)
                if conn is None:
                    node = self.records.get(key) or DispyNode(address.ip_addr, address.port)
                    conn = NodeConn(node, entry)
                    self.nodes[key] = conn
                    conn.op = self.driver.spawn(self._start_node(conn))
                conns.append(conn)
        pending = [c.op for c in conns if c.op is not None and not c.op.done()]
        if pending:
            await asyncio.wait(pending)
        return conns

    async def search(self, entries: list[NodeEntry]) -> list[NodeConn]:
        """Find the nodes the patterns among ``entries`` stand for (see :class:`NodeSearch`)."""
        return await self.finder.search(entries)

    @property
    def searcher(self) -> Any:
        """The discovery plugin's search, once a pattern asked for one."""
        return self.finder.searcher

    def found(self, key: str, ip_addr: str, port: int, name: str, entry: NodeEntry) -> None:
        """Discovery found a node a pattern matches and that is not in use: connect and set it up."""
        self.named[key] = entry  # tried again like a named node if it fails
        self.reconnect.forget(key)
        conn = NodeConn(self.records.get(key) or DispyNode(ip_addr, port), entry)
        conn.node.name = conn.node.name or name
        self.nodes[key] = conn
        conn.op = self.driver.spawn(self._start_node(conn))

    async def _start_node(self, conn: NodeConn) -> None:
        node, cluster = conn.node, self.cluster
        timeout = cluster.config.msg_timeout
        try:
            channel = await Channel.connect(
                cluster.transport, node.ip_addr, node.port, secret=cluster.secret,
                serializers={cluster.serializer.name: cluster.serializer}, serializer=cluster.serializer.name,
                timeout=timeout, name=cluster.name, software=f"neodispy {__version__}")
        except AuthenticationError as exc:
            await self.fail(conn, f"authentication failed (is the secret the node's?): {exc}", permanent=True)
            return
        except (ProtocolError, DispyError, OSError) as exc:
            await self.fail(conn, f"cannot connect: {exc}", permanent=_for_good(exc))
            return
        conn.channel = channel
        channel.session.max_payload = cluster.max_payload
        self.driver.spawn(channel.run(lambda msg: self.driver.handle(conn, msg)),
                          on_done=lambda _: self._channel_ended(conn, channel))
        try:
            info = await channel.request(m.NodeInfoRequest(channel.next_req_id()), timeout)
            assert isinstance(info, m.NodeInfo)
            node.name, node.platform = info.name, info.platform
            alloc = choose_alloc(cluster._entries, node.ip_addr, node.port, node.name, conn.via)
            if alloc is None:
                log.info("node %s (%s) matches no entry of cluster %s's nodes; not used", node.key, node.name,
                         cluster.name)
                await self.release(conn, notify=False)
                return
            conn.alloc = alloc
            await self._setup_node(conn, info)
        except (DispyError, OSError, AssertionError) as exc:  # setup failing fails again: for good
            await self.fail(conn, str(exc) or type(exc).__name__, permanent=not isinstance(exc, OSError))

    async def _setup_node(self, conn: NodeConn, info: m.NodeInfo) -> None:
        """allocate() decides CPUs, depends and setup_args; then open, send files, run setup."""
        node, alloc, channel, cluster = conn.node, conn.alloc, conn.channel, self.cluster
        assert alloc is not None and channel is not None
        node.avail_info = DispyNodeAvailInfo.from_mapping(info.avail_info)
        node.avail_cpus = info.avail_cpus
        node.update_time = time.time()
        try:
            cpus = alloc.allocate(cluster, node.ip_addr, node.name, info.cpus, node.avail_info, info.platform)
            # Captured now: a shared NodeAllocate may set other values for the next node meanwhile.
            conn.depends = list(alloc.depends or [])
            args = alloc.setup_args
            conn.setup_args = tuple(args) if isinstance(args, list | tuple) else (args,)
            view = NodeView(node.ip_addr, node.port, node.name, info.cpus, info.platform, dict(info.avail_info))
            hooked = cluster.plugins.hook.dispy_allocate(cluster=cluster, node=view, cpus=cpus)
            cpus = int(hooked if hooked is not None else cpus)
        except Exception as exc:
            raise DispyError(f"allocate() of {type(alloc).__name__} raised {type(exc).__name__}: {exc}") from exc
        if cpus <= 0:
            log.info("node %s (%s) not used: allocate gave 0 CPUs", node.key, node.name)
            await self.release(conn, notify=conn.state == CLOSING, reason="allocate gave 0 CPUs")
            return
        conn.state = SETUP
        await self._open_computation(conn, channel, cpus)
        if conn.state != SETUP:  # closed meanwhile (cluster closing, connection lost)
            return
        conn.state = READY
        conn.heard = (channel.rx_bytes, time.time())
        node.reason = None
        self.failed.pop(node.key, None)
        self.reconnect.connected(node.key)
        self.no_node_declared = False
        self.records[node.key] = node
        node.update_time = time.time()
        log.info("node %s (%s) ready with %d CPUs", node.key, node.name, conn.max_cpus)
        self.driver.feed(ev.NodeReady(node.key, conn.max_cpus, time.time()))
        if not conn.allocated:
            self.driver.feed(ev.NodeAllocation(node.key, False))

    async def _open_computation(self, conn: NodeConn, channel: Channel, cpus: int) -> None:
        cluster = self.cluster
        pkg, timeout = cluster._pkg, cluster.config.msg_timeout
        # A record that has setup_args already (dispyscheduler relays a client's) keeps them unless allocate gives some.
        setup_args = cluster.serializer.dumps(conn.setup_args) if conn.setup_args else pkg.computation.setup_args
        computation = dataclasses.replace(pkg.computation, comp_id=cluster.comp_id, setup_args=setup_args,
                                          options={**pkg.computation.options, **cluster._computation_options()})
        reply = await channel.request(m.ComputationOpen(
            req_id=channel.next_req_id(), **computation.fields(), cleanup_files=cluster._cleanup_files, cpus=cpus,
            dest_path=cluster.dest_path or "", setup_timeout=cluster.setup_timeout), timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(f"node could not open the computation: {reply.error}")
        files = list(pkg.files) + [file_depend(os.fspath(p)) for p in conn.depends]
        for dep in files:
            await self.send_depend(conn, channel, dep, 0)
        reply = await channel.request(m.ComputationSetup(channel.next_req_id(), cluster.comp_id),
                                      cluster.setup_timeout + timeout)
        assert isinstance(reply, m.ComputationReady)
        if not reply.ok:
            raise DispyError(f"setup failed: {reply.error.rstrip()}")
        conn.max_cpus = min(cpus, reply.cpus) if reply.cpus else cpus
        conn.node.cpus = conn.max_cpus

    # ------------------------------------------------------------------ files
    async def send_file(self, conn: NodeConn, channel: Channel, path: str, relpath: str, job_uid: int) -> None:
        dep = file_depend(path)
        dep.relpath = relpath
        await self.send_depend(conn, channel, dep, job_uid)

    async def send_depend(self, conn: NodeConn, channel: Channel, dep: FileDepend, job_uid: int) -> None:
        """Stream a file in chunks; the node acknowledges the last one or refuses with a reason (which may
        come early, at the first chunk: then the rest is not sent)."""
        async with conn.transfers:
            await stream_file(channel, dep, self.cluster.comp_id, job_uid, conn.file_errors,
                              self.cluster.config.msg_timeout)

    async def send_file_to(self, spec: Any, dep: FileDepend) -> int:
        conn = self.find(spec)
        if conn is None or conn.state != READY or conn.channel is None:
            log.error("send_file(%r): node %r is not a usable node of cluster %s", dep.path, spec, self.cluster.name)
            return -1
        try:
            await self.send_depend(conn, conn.channel, dep, 0)
        except (DispyError, OSError) as exc:
            log.error("send_file(%r) to %s: %s", dep.path, conn.node.key, exc)
            return -1
        return 0

    # ------------------------------------------------------------------ failures and releases
    def record_failure(self, key: str, reason: str) -> None:
        self.failed[key] = reason
        log.error("node %s cannot be used by cluster %s: %s", key, self.cluster.name, reason)

    async def fail(self, conn: NodeConn, reason: str, permanent: bool = False) -> None:
        """The node cannot be used: say why (log, ``status()['failed_nodes']``, ``node.reason``, Closed) the
        first time; a retry that fails again only updates the reason. Retried later unless ``permanent``."""
        if conn.state == CLOSED:
            return
        key = conn.node.key
        if self.cluster._closed:
            reason = f"cluster closed ({reason})"
        elif conn.retry:
            self.failed[key] = reason
            log.debug("node %s still cannot be used by cluster %s: %s", key, self.cluster.name, reason)
        else:
            self.record_failure(key, reason)
        if not self.cluster._closed and key in self.named:
            self.reconnect.failed(key, time.time(), reason, permanent)
        conn.node.reason = reason
        await self.release(conn, notify=not conn.retry, reason=reason)

    async def release(self, conn: NodeConn, notify: bool, reason: str | None = None) -> None:
        channel = conn.channel
        self._drop(conn, notify, reason or "node closed")
        if channel is not None:
            await channel.close(reason or "released")

    def _drop(self, conn: NodeConn, notify: bool, reason: str) -> None:
        """The connection is done with: forget it; the state cancels jobs pinned to it; tell the program."""
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        node = conn.node
        if self.nodes.get(node.key) is conn:
            del self.nodes[node.key]
        self.driver.sync(conn)
        known = node.key in self.driver.state.nodes
        self.leaving[node.key] = conn
        try:
            self.driver.feed(ev.NodeReleased(node.key, reason, time.time(), notify))
        finally:
            del self.leaving[node.key]
        if conn.drained is not None:
            conn.drained.set()
        if notify and not known:
            self.driver.node_status(NodeStatus.Closed, node)

    def _channel_ended(self, conn: NodeConn, channel: Channel) -> None:
        """The channel ended: unless on purpose, the state recovers the jobs that were there."""
        if conn.channel is not channel or conn.state == CLOSED:
            return
        reason = channel.close_reason or "closed"
        busy = self.driver.state.nodes[conn.node.key].busy if conn.node.key in self.driver.state.nodes else 0
        if busy and not self.cluster._closed:
            log.warning("lost node %s (%s) with %d jobs", conn.node.key, reason, busy)
        if not self.cluster._closed:
            conn.node.reason = f"connection lost: {reason}"
            self.record_failure(conn.node.key, conn.node.reason)
        known = conn.node.key in self.driver.state.nodes
        if not self.cluster._closed and conn.node.key in self.named:  # retried, unless its operator released us
            self.reconnect.failed(conn.node.key, time.time(), conn.node.reason or reason,
                                  permanent=channel.close_code == "released")
        self.leaving[conn.node.key] = conn
        try:
            self.driver.feed(ev.NodeLost(conn.node.key, reason, time.time()))
        finally:
            del self.leaving[conn.node.key]
        self._drop(conn, not known, reason)

    # ------------------------------------------------------------------ the node operations of the API
    def find(self, spec: Any) -> NodeConn | None:
        """The connection a program means by a DispyNode, NodeAllocate, ``ip:port``, address or name."""
        if isinstance(spec, DispyNode):
            return self.nodes.get(spec.key)
        port = None
        if isinstance(spec, NodeAllocate):
            spec, port = spec.host, spec.port
        if not isinstance(spec, str):
            return None
        conn = self.nodes.get(spec)
        if conn is not None:
            return conn
        matches = [c for c in self.nodes.values()
                   if spec in (c.node.ip_addr, c.node.name) and (port is None or c.node.port == port)]
        preferred = [c for c in matches if c.node.port == self.cluster.node_port]
        candidates = preferred or matches
        return candidates[0] if candidates else None

    def set_allocated(self, conn: NodeConn, allocated: bool) -> None:
        conn.allocated = allocated
        self.driver.feed(ev.NodeAllocation(conn.node.key, allocated))

    def queue_op(self, conn: NodeConn, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a life operation on ``conn`` after the one in progress (operations never interleave)."""
        previous = conn.op

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            if conn.state != CLOSED:
                await make()

        conn.op = self.driver.spawn(run())

    async def close_op(self, conn: NodeConn, release: bool, terminate: bool) -> None:
        """No new jobs; once the state says the node's jobs are done (or cancelled), close the computation."""
        channel = conn.channel
        if channel is None or conn.state == CLOSED:
            return
        was_setup = conn.state in (READY, CLOSING)
        conn.state = CLOSING
        conn.drained = asyncio.Event()
        if conn.node.key not in self.driver.state.nodes:
            conn.drained.set()
        self.driver.feed(ev.NodeClosing(conn.node.key, terminate, time.time()))
        await conn.drained.wait()
        conn.drained = None
        if conn.state == CLOSED:
            return
        if was_setup and not channel.closed:
            try:
                await channel.request(m.ComputationClose(channel.next_req_id(), self.cluster.comp_id, terminate),
                                      self.close_timeout())
            except (DispyError, OSError) as exc:
                log.warning("node %s: closing computation: %s", conn.node.key, exc)
        if release:
            self.named.pop(conn.node.key, None)  # closed by the program: not contacted again
            self.reconnect.forget(conn.node.key)
            await self.release(conn, notify=True)

    async def resetup_op(self, conn: NodeConn) -> None:
        await self.close_op(conn, release=False, terminate=False)
        channel = conn.channel
        if conn.state == CLOSED or channel is None:
            return
        try:
            info = await channel.request(m.NodeInfoRequest(channel.next_req_id()), self.cluster.config.msg_timeout)
            assert isinstance(info, m.NodeInfo)
            await self._setup_node(conn, info)
        except (DispyError, OSError, AssertionError) as exc:
            await self.fail(conn, f"setting up again: {exc}")

    def close_timeout(self) -> float:
        """How long a node may take to close the computation: its cleanup function's time, if it has one."""
        cleanup = self.cluster.setup_timeout if self.cluster._pkg.computation.cleanup else 0.0
        return self.cluster.config.msg_timeout + cleanup

    def shutdown_timeout(self) -> float:
        """The most ``close_all`` takes: the cancels of running jobs answered, then the close."""
        return self.cluster.config.msg_timeout + self.close_timeout()

    async def close_all(self, terminate: bool) -> None:
        """The cluster closes: close the computation on every node set up, drop the others. A node that does
        not confirm in time (frozen, cut off) is dropped, with the reason logged: closing never hangs on it."""
        self.finder.close()
        closers: dict[asyncio.Task[Any], NodeConn] = {}
        for conn in list(self.nodes.values()):
            if conn.state in (READY, CLOSING):
                self.queue_op(conn, lambda conn=conn: self.close_op(conn, True, terminate))  # type: ignore[misc]
                assert conn.op is not None
                closers[conn.op] = conn
            else:
                closers[self.driver.spawn(self.release(conn, notify=False, reason="cluster closed"))] = conn
        if not closers:
            return
        limit = self.shutdown_timeout()
        _, late = await asyncio.wait(list(closers), timeout=limit)
        for task in late:
            conn = closers[task]
            task.cancel()
            reason = f"did not confirm closing the computation within {limit:g} s (frozen or cut off?)"
            log.warning("node %s (%s) %s; dropped without it", conn.node.key, conn.node.name, reason)
            conn.node.reason = reason
            await self.release(conn, notify=True, reason=reason)

    def computation_lost(self, conn: NodeConn) -> None:
        """The node closed the computation on its own (its host process died): set it up again there."""
        if conn.state != READY or self.cluster._closed:
            return
        log.warning("node %s (%s) lost the computation's host process; setting it up again", conn.node.key,
                    conn.node.name)
        self.queue_op(conn, lambda: self.resetup_op(conn))

    # ------------------------------------------------------------------ trying again
    def tick(self, now: float) -> None:
        """Contact again the named nodes whose retry is due; say when no node is usable (and why)."""
        if self.cluster._closed:
            return
        for key in self.reconnect.due(now):
            entry = self.named.get(key)
            if entry is None or key in self.nodes or ":" not in key:
                self.reconnect.forget(key)
                continue
            ip_addr, port = key.rsplit(":", 1)
            conn = NodeConn(self.records.get(key) or DispyNode(ip_addr, int(port)), entry)
            conn.retry = True
            self.nodes[key] = conn
            conn.op = self.driver.spawn(self._start_node(conn))
        if self.cluster.pulse_interval:
            self._check_pulses(now, PULSES_MISSED * self.cluster.pulse_interval)
        if any(c.state == READY for c in self.nodes.values()) or not self.cluster._discovered.is_set():
            self._next_warning = (0.0, WARN_FIRST)
            return
        self._no_usable_node(now)

    def _check_pulses(self, now: float, limit: float) -> None:
        """A node that sent nothing for ``PULSES_MISSED`` pulses is frozen or cut off: it is lost."""
        for conn in list(self.nodes.values()):
            channel = conn.channel
            if conn.state != READY or channel is None or channel.closed:
                continue
            if channel.rx_bytes != conn.heard[0]:
                conn.heard = (channel.rx_bytes, now)
            elif now - conn.heard[1] >= limit:
                reason = (f"missed {PULSES_MISSED} pulses: nothing received for {now - conn.heard[1]:.1f} s "
                          f"(pulse_interval {self.cluster.pulse_interval:g} s)")
                log.warning("node %s (%s) %s; taken as lost", conn.node.key, conn.node.name, reason)
                conn.node.reason = reason
                self.driver.spawn(channel.close(reason))

    def _no_usable_node(self, now: float) -> None:
        why = "; ".join(f"{key}: {reason}" for key, reason in self.failed.items()) or "no node answered"
        if self.searcher is not None:
            why += f"; discovery: {self.searcher.describe()}"
        limit = self.cluster.first_node_timeout
        for_good = self.searcher is None and self.reconnect.all_permanent(set(self.named))
        timed_out = limit is not None and not self.records and now - self.cluster._start_time >= limit
        if (for_good or timed_out) and not self.no_node_declared:
            self.no_node_declared = True
            reason = (f"no usable node: every node failed for good ({why})" if for_good else
                      f"no usable node within first_node_timeout={limit:g} s ({why})")
            log.error("cluster %s: %s; its jobs end Abandoned", self.cluster.name, reason)
            self.driver.feed(ev.NoUsableNode(reason, now))
            return
        at, step = self._next_warning
        if not for_good and now >= at:
            if at:
                log.warning("cluster %s has no usable node yet; still trying: %s", self.cluster.name, why)
            self._next_warning = (now + step, min(WARN_MAX, step * 2))

    def snapshot(self) -> tuple[list[DispyNode], dict[str, str]]:
        """The usable nodes (brought up to date) and why the others could not be used."""
        return [self.driver.sync(c) for c in self.nodes.values() if c.state == READY], dict(self.failed)


def _for_good(exc: BaseException) -> bool:
    """A connection failure that trying again cannot cure: the peer's certificate, or its protocol."""
    return isinstance(exc, ssl.SSLCertVerificationError | ProtocolError) or (
        isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc).upper())
