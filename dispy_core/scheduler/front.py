"""The scheduler's front: accepts client programs and looks like one big node to each of them.

A ``SharedJobCluster`` speaks to it the protocol a ``JobCluster`` speaks to a node (``NodeInfoRequest``,
``ComputationOpen``, ``FileChunk``, ``ComputationSetup``, ``JobSubmit``, ``JobCancel``, ``ComputationClose``,
``Ping``). The files a client sends are kept under ``--dest_path_prefix`` for as long as the computation is
open; at ``ComputationSetup`` a :class:`~dispy_core.scheduler.backend.Backend` sets the computation up on the
nodes, and from then on jobs go to it and its nodes' answers come back here, to the client, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispy_core import __version__
from dispy_core.channel import Channel, _fmt
from dispy_core.client.computation import FileDepend
from dispy_core.errors import DispyError, ProtocolError, UnsafePathError
from dispy_core.interfaces import ByteStream, Listener
from dispy_core.node.files import ComputationFiles
from dispy_core.node.kept import KEPT_LIMIT, DiskBudget, KeptResults
from dispy_core.node.liveness import send_quietly, zombie_loop
from dispy_core.paths import check_relpath, safe_join
from dispy_core.protocol import messages as m
from dispy_core.ratelog import Throttled
from dispy_core.scheduler.arbiter import Arbiter
from dispy_core.scheduler.backend import Backend, BackendObserver, NodeSide
from dispy_core.status import JobStatus, RefusalReason

log = logging.getLogger("dispy.scheduler")

__all__ = ["ALL_CPUS", "ClientComputation", "SchedulerServer"]

ALL_CPUS = 1 << 16
"""The CPUs the scheduler offers a client before its computation is set up: "all the nodes give". The
client's own ``NodeAllocate`` may ask for fewer; the answer to ``ComputationSetup`` then says how many the
nodes really gave (their sum), which is what the client pipelines for."""
HANDSHAKE_DEADLINE = 5.0
JOB_FILES = ".jobs"
KEPT = ".kept"
"""Under a computation's directory here: the results kept for its client's ``recover_jobs``."""


@dataclass
class ClientComputation:
    """A computation a client opened here: its files (kept here until it closes) and its back end."""

    opened: m.ComputationOpen
    channel: Channel
    work_dir: Path
    files: ComputationFiles
    depends: list[FileDepend] = field(default_factory=list)
    job_files: dict[int, tuple[ComputationFiles, dict[str, str]]] = field(default_factory=dict)
    """A job's own files (``dispy_job_depends``), each job in its own directory: relpath -> path here."""
    backend: Backend | None = None
    closing: bool = False
    kept: KeptResults | None = None
    """For a client that keeps a recover file: the results it has not acknowledged (as a node keeps them)."""
    detached_at: float | None = None
    """When its client went away without closing it (its jobs go on, their results kept for recover_jobs)."""

    @property
    def name(self) -> str:
        return self.opened.name


@dataclass
class FrontOptions:
    """What the client-facing side is started with (see ``dispy_core.scheduler.cli``)."""

    hosts: list[str]
    port: int
    secret: str = field(repr=False)
    name: str
    dest_path_prefix: Path
    msg_timeout: float = 10.0
    zombie_interval: float = 60.0
    """Minutes a client may stay silent (answering no ping) before it is presumed dead; 0 = never."""
    max_file_size: int = 0
    max_payload: int = 1 << 30
    tls: bool = False
    cooperative: bool = False
    """Clients may change how many CPUs of a node the scheduler uses (``set_node_cpus``)."""


class SchedulerServer:
    """One dispyscheduler: its clients' channels and computations, and the node side they share."""

    def __init__(self, options: FrontOptions, transport: Any, serializer: Any, side: NodeSide) -> None:
        self.options = options
        self.transport = transport
        self.serializer = serializer
        self.side = side
        self.arbiter = Arbiter(side.plugins.make_policy())
        self.observers: list[BackendObserver] = []
        """Told of every computation's set-up, jobs and close (``--httpd``'s monitor)."""
        self.comps: dict[str, ClientComputation] = {}
        self.channels: set[Channel] = set()
        self.listeners: list[Listener] = []
        self.address: tuple[str, int] = ("", options.port)
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refusals = Throttled(log)
        self._kept_budget = DiskBudget(KEPT_LIMIT)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        self.options.dest_path_prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
        port = self.options.port
        for bind in self.options.hosts or [""]:
            listener = await self.transport.listen(bind, port, self._serve)
            port = port or listener.address[1]
            self.listeners.append(listener)
        self.address = (self.options.hosts[0] if self.options.hosts else "", self.listeners[0].address[1])
        nodes = ", ".join(f"{h}:{p or self.side.node_port}" for h, p in self.side.nodes) or \
            f"every node discovery finds (UDP {self.side.node_port})"
        log.info("dispyscheduler %s serving clients at %s%s; nodes: %s; policy: %s", self.options.name,
                 _fmt(self.address), " with TLS" if self.options.tls else "", nodes, self.arbiter.policy_name)
        if not self.options.secret:
            log.warning("dispyscheduler has NO cluster secret: any program that can reach %s can run code on its "
                        "nodes; set --cluster_secret", _fmt(self.address))
        self._spawn(self._expire_loop())
        if self.options.zombie_interval > 0:
            self._spawn(zombie_loop(self.options.zombie_interval * 60.0, lambda: self.channels, self._stopped,
                                    self._drop_zombie, self._spawn))
        return self.address

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Close every computation on its nodes (terminating its jobs), then the clients' connections."""
        self._stopped.set()
        for listener in self.listeners:
            await listener.close()
        # The clients first, told why: each takes its jobs as lost with the connection (a reentrant client sends
        # them again when it reconnects to a scheduler started again), none hears of them as terminated.
        for channel in list(self.channels):
            await send_quietly(channel, m.Error("stopping", f"dispyscheduler {self.options.name} stopping; its "
                                                            f"computations are closed on the nodes"))
            await channel.close("dispyscheduler stopping")
        comps = list(self.comps.values())
        if comps:
            log.info("closing %d computations on their nodes", len(comps))
            await asyncio.gather(*(self._close(comp, True) for comp in comps), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        log.info("dispyscheduler %s stopped", self.options.name)

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
        if self._stopped.is_set():
            await stream.close()
            return
        try:
            channel = await Channel.accept(
                stream, secret=self.options.secret, serializers={self.serializer.name: self.serializer},
                serializer=self.serializer.name, timeout=min(self.options.msg_timeout, HANDSHAKE_DEADLINE),
                name=self.options.name, software=f"neodispy {__version__} dispyscheduler")
        except (ProtocolError, DispyError, OSError) as exc:
            self._refusals.warning("refused client %s: %s", _fmt(stream.peer), exc, key=type(exc).__name__)
            return
        log.debug("client %s authenticated", _fmt(channel.peer))
        channel.session.max_payload = self.options.max_payload
        self.channels.add(channel)
        try:
            await channel.run(lambda msg: self._handle(channel, msg))
        finally:
            self.channels.discard(channel)
            gone = [comp for comp in self.comps.values() if comp.channel is channel]
            if gone and not self._stopped.is_set():
                for comp in gone:
                    self._client_gone(channel, comp)

    def _client_gone(self, channel: Channel, comp: ClientComputation) -> None:
        """Its client went away without closing it: kept for ``recover_jobs`` if the client keeps a recover
        file (as a node keeps it), else closed on the nodes."""
        if comp.kept is not None and comp.backend is not None and not comp.closing:
            comp.detached_at = time.time()
            comp.kept.spill()
            log.warning("client %s went away (%s) without closing %s; its jobs go on and their results are kept "
                        "for recover_jobs (up to %g min)", _fmt(channel.peer), channel.close_reason, comp.name,
                        self.keep_minutes)
            return
        log.warning("client %s went away (%s) without closing %s; closing on the nodes, its jobs terminated",
                    _fmt(channel.peer), channel.close_reason, comp.name)
        self._spawn(self._close(comp, True))

    @property
    def keep_minutes(self) -> float:
        """How long a detached computation is kept: the zombie interval, or an hour when that is off."""
        return self.options.zombie_interval or 60.0

    async def _expire_loop(self) -> None:
        """Close the detached computations nobody recovered within ``keep_minutes``."""
        limit = self.keep_minutes * 60.0
        period = max(0.05, min(limit / 4.0, 30.0))
        while not self._stopped.is_set():
            await asyncio.sleep(period)
            now = time.time()
            for comp in list(self.comps.values()):
                if comp.detached_at is not None and now - comp.detached_at >= limit and not comp.closing:
                    log.warning("computation %s: not recovered within %g min of its client going away; closing "
                                "it with its %d kept results", comp.name, self.keep_minutes,
                                len(comp.kept) if comp.kept is not None else 0)
                    self._spawn(self._close(comp, True))

    def _to_client(self, comp: ClientComputation, msg: m.Message) -> bool:
        """What the nodes say about the computation, on to its client's connection of the moment; a result
        is kept until the client acknowledges it (on disk while the client is away)."""
        channel = comp.channel
        if comp.kept is None or not isinstance(msg, m.JobResult):
            return channel.send_nowait(msg)
        if comp.detached_at is None and channel.send_nowait(msg):
            comp.kept.keep_sent(msg)
        else:
            comp.kept.store(msg)
        return True

    async def _drop_zombie(self, channel: Channel, silent: float) -> None:
        log.warning("client %s silent for %.1f s (zombie_interval %g min): presumed dead", _fmt(channel.peer),
                    silent, self.options.zombie_interval)
        await channel.close("client presumed dead (zombie_interval)")  # its computations close with it

    def _handle(self, channel: Channel, msg: m.Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            channel.send_nowait(m.Error("unexpected", f"dispyscheduler does not accept {type(msg).__name__}",
                                        getattr(msg, "req_id", 0)))
            return
        try:
            handler(self, channel, msg)
        except Exception as exc:  # one bad message must not take the scheduler down
            log.exception("handling %s from %s failed", type(msg).__name__, _fmt(channel.peer))
            channel.send_nowait(m.Error("bad-request", f"dispyscheduler could not handle {type(msg).__name__}: "
                                                       f"{exc}", getattr(msg, "req_id", 0)))

    def _owned(self, channel: Channel, comp_id: str, req_id: int = 0) -> ClientComputation | None:
        comp = self.comps.get(comp_id)
        if comp is None or comp.channel is not channel:
            channel.send_nowait(m.Error("unknown-computation", f"no computation {comp_id!r} of yours here", req_id))
            return None
        return comp

    # ------------------------------------------------------------------ the big node
    def _on_info(self, channel: Channel, msg: m.NodeInfoRequest) -> None:
        channel.send_nowait(m.NodeInfo(
            req_id=msg.req_id, name=self.options.name, ip_addr=self.address[0] or "", cpus=ALL_CPUS,
            avail_cpus=ALL_CPUS, platform=platform.platform(), python=".".join(map(str, sys.version_info[:3])),
            executor="dispyscheduler", serializers=[self.serializer.name]))

    def _on_ping(self, channel: Channel, msg: m.Ping) -> None:
        channel.send_nowait(m.Pong(msg.req_id))

    def _on_pong(self, channel: Channel, msg: m.Pong) -> None:
        """A client's answer to the zombie check's ping: receiving it was the point."""

    def _on_open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        try:
            check_relpath(msg.comp_id)
            if msg.comp_id in self.comps:
                raise DispyError(f"computation {msg.comp_id} is already open here")
            if self._stopped.is_set():
                raise DispyError("dispyscheduler is stopping")
            work_dir = self.options.dest_path_prefix / msg.comp_id
            work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (DispyError, OSError) as exc:
            channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False, error=str(exc)))
            return
        files = ComputationFiles(work_dir, self.options.max_file_size)
        comp = self.comps[msg.comp_id] = ClientComputation(msg, channel, work_dir, files)
        if msg.options.get("recover") is True:
            comp.kept = KeptResults(work_dir / KEPT, self._kept_budget)
        log.info("computation %s (%s) opened by %s", msg.name, msg.comp_id, _fmt(channel.peer))
        channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, True))

    def _on_file(self, channel: Channel, msg: m.FileChunk) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is None:
            return
        if msg.job_uid:
            files, paths = comp.job_files.setdefault(msg.job_uid, (
                ComputationFiles(comp.work_dir / JOB_FILES / str(msg.job_uid), self.options.max_file_size), {}))
        else:
            files, paths = comp.files, {}
        try:
            files.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            complete = files.write(msg)
        except (UnsafePathError, OSError, ValueError) as exc:
            log.warning("file %r for %s refused: %s", msg.relpath, comp.name, exc)
            channel.send_nowait(m.FileAck(msg.req_id, False, str(exc)))
            return
        if not complete:
            return
        path = safe_join(files.work_dir, msg.relpath)
        dep = FileDepend(str(path), msg.relpath, msg.size, msg.mode & 0o777)
        if msg.job_uid:
            paths[msg.relpath] = str(path)
        elif comp.backend is not None:  # send_file after setup: on to the nodes, acknowledged when they have it
            self._spawn(self._pass_file_on(comp, comp.backend, dep, msg.req_id))
            return
        else:
            comp.depends.append(dep)
        channel.send_nowait(m.FileAck(msg.req_id, True))

    async def _pass_file_on(self, comp: ClientComputation, backend: Backend, dep: FileDepend, req_id: int) -> None:
        refusals = await backend.send_file(dep)
        if refusals:
            log.warning("file %r of %s refused by nodes: %s", dep.relpath, comp.name, refusals)
        await send_quietly(comp.channel, m.FileAck(req_id, not refusals, refusals))

    def _on_setup(self, channel: Channel, msg: m.ComputationSetup) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None and comp.backend is None:
            self._spawn(self._setup(comp, msg.req_id))

    async def _setup(self, comp: ClientComputation, req_id: int) -> None:
        """Set the computation up on the nodes; the client learns how many CPUs they gave it, or why none."""
        try:
            comp.backend = Backend(self.side, comp.opened, list(comp.depends),
                                   to_client=lambda msg: self._to_client(comp, msg),
                                   job_ended=lambda uid: self._job_ended(comp, uid),
                                   arbiter=self.arbiter, observers=self.observers)
        except ValueError as exc:  # options the client sent that make no sense (nodes=)
            await send_quietly(comp.channel, m.ComputationReady(req_id, comp.opened.comp_id, False, error=str(exc)))
            await self._close(comp, True)
            return
        cpus = await comp.backend.start()
        if comp.closing:
            return
        if cpus == 0 and (comp.backend._life.failed or comp.backend.unmatched()):  # the client is told why
            error = f"no node could set up the computation through dispyscheduler: {comp.backend.failures()}"
            log.warning("computation %s: %s", comp.name, error)
            await send_quietly(comp.channel, m.ComputationReady(req_id, comp.opened.comp_id, False, error=error))
            await self._close(comp, True)
            return
        if cpus == 0:
            log.warning("computation %s: no node ready yet; its jobs wait here for one", comp.name)
        log.info("computation %s set up with %d CPUs on %d nodes", comp.name, cpus,
                 sum(1 for c in comp.backend._life.nodes.values() if c.state == "ready"))
        await send_quietly(comp.channel, m.ComputationReady(req_id, comp.opened.comp_id, True, cpus=max(1, cpus),
                                                            dest_path=comp.opened.dest_path))

    def _on_submit(self, channel: Channel, msg: m.JobSubmit) -> None:
        comp = self._owned(channel, msg.comp_id)
        if comp is None:
            return
        backend = comp.backend
        if backend is None or comp.closing or backend.has_job(msg.job_uid):
            why = "closing" if comp.closing else "not set up yet" if backend is None else "job already here"
            code = RefusalReason.CLOSING if comp.closing else RefusalReason.NOT_READY
            channel.send_nowait(m.JobRefused(msg.comp_id, msg.job_uid, why, code=code.value))
            return
        _, paths = comp.job_files.get(msg.job_uid, (None, {}))
        missing = [relpath for relpath in msg.files if relpath not in paths]
        if missing:
            channel.send_nowait(m.JobResult(msg.comp_id, msg.job_uid, int(JobStatus.Terminated), exception=(
                f"dispyscheduler did not receive the job's files {missing}"), end_time=time.time()))
            return
        backend.submit(msg.job_uid, bytes(msg.args), [(paths[relpath], relpath) for relpath in msg.files])

    def _job_ended(self, comp: ClientComputation, uid: int) -> None:
        entry = comp.job_files.pop(uid, None)
        if entry is not None:
            shutil.rmtree(entry[0].work_dir, ignore_errors=True)

    def _on_cancel(self, channel: Channel, msg: m.JobCancel) -> None:
        comp = self._owned(channel, msg.comp_id)
        if comp is not None and comp.backend is not None:
            self._spawn(comp.backend.cancel(msg.job_uid))

    def _on_close(self, channel: Channel, msg: m.ComputationClose) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None:
            self._spawn(self._close_and_reply(comp, msg))

    async def _close_and_reply(self, comp: ClientComputation, msg: m.ComputationClose) -> None:
        await self._close(comp, msg.terminate)
        await send_quietly(comp.channel, m.ComputationClosed(msg.req_id, msg.comp_id))

    async def _close(self, comp: ClientComputation, terminate: bool) -> None:
        """Close the computation on its nodes, then forget it and its files here."""
        if comp.closing:
            return
        comp.closing = True
        try:
            if comp.backend is not None:
                await comp.backend.close(terminate)
        finally:
            self.comps.pop(comp.opened.comp_id, None)
            if comp.kept is not None:
                comp.kept.clear()
            comp.files.remove(self.options.dest_path_prefix, True)
            if comp.work_dir.is_relative_to(self.options.dest_path_prefix):
                shutil.rmtree(comp.work_dir, ignore_errors=True)
            log.info("computation %s (%s) closed", comp.name, comp.opened.comp_id)

    def _on_ack(self, channel: Channel, msg: m.ResultsAck) -> None:
        """The client has these results for good: the scheduler, which kept them for it, forgets them."""
        comp = self.comps.get(msg.comp_id)
        if comp is not None and comp.channel is channel and comp.kept is not None:
            comp.kept.acknowledged(msg.job_uids)

    def _on_recover(self, channel: Channel, msg: m.JobsRecover) -> None:
        """``recover_jobs`` on ``channel`` (answered as a node answers, see ``node/recovery.py``): the
        computation is its own from now on; the results kept go to it at once, the others as their jobs end."""
        comp = self.comps.get(msg.comp_id)
        wanted = set(msg.job_uids)
        if comp is None or comp.closing or comp.backend is None:
            channel.send_nowait(m.JobsRecovered(msg.req_id, msg.comp_id, False, unknown=sorted(wanted), error=(
                "no such computation at dispyscheduler (closed, expired after the zombie interval, or the "
                "scheduler was restarted since)")))
            return
        previous = comp.channel
        if previous is not channel:
            comp.channel = channel
            if comp.kept is not None:
                comp.kept.spill()  # sent on the old connection, perhaps never received
            if not previous.closed:  # the old client frozen or cut off, not gone: it is replaced
                self._spawn(previous.close("computation taken over by recover_jobs"))
        comp.detached_at = None
        kept = comp.kept
        if kept is not None:
            kept.forget_except(wanted)
        have = kept.uids() & wanted if kept is not None else set()
        active = {uid for uid in comp.backend._driver.jobs if uid in wanted} - have
        dropped = kept.dropped if kept is not None else {}
        unknown = wanted - have - active
        reasons = sorted({dropped[uid] for uid in unknown if uid in dropped})
        if kept is None:
            reasons.append("the client kept no recover file when it opened the computation")
        log.info("computation %s taken over by recover_jobs from %s: %d results kept, %d jobs active, %d unknown",
                 comp.name, _fmt(channel.peer), len(have), len(active), len(unknown))
        channel.send_nowait(m.JobsRecovered(msg.req_id, msg.comp_id, True, kept=sorted(have),
                                            running=sorted(active), unknown=sorted(unknown),
                                            error="; ".join(reasons)))
        if kept is not None:
            for uid in sorted(have):
                result = kept.load(uid)
                if result is not None:
                    channel.send_nowait(result)

    def _on_node_cpus(self, channel: Channel, msg: m.NodeCpusRequest) -> None:
        """``set_node_cpus`` of a client (``--cooperative`` only): the CPUs of that node every computation uses."""
        if self._owned(channel, msg.comp_id, msg.req_id) is None:
            return
        cpus, key, error = self._set_node_cpus(msg.node, msg.cpus)
        if error:
            log.info("set_node_cpus(%r, %d) from %s refused: %s", msg.node, msg.cpus, _fmt(channel.peer), error)
        channel.send_nowait(m.NodeCpusSet(msg.req_id, cpus, key, error))

    def _set_node_cpus(self, spec: str, cpus: int) -> tuple[int, str, str]:
        """(CPUs now used, ``addr:port``, "") or (-1, "", why not)."""
        if not self.options.cooperative:
            return -1, "", "dispyscheduler was not started with --cooperative: clients may not change its nodes' CPUs"
        known: dict[str, str] = {}
        for comp in self.comps.values():
            if comp.backend is not None:
                known.update(comp.backend.node_keys())
        found = [key for key, name in known.items() if spec in (key, name, key.rpartition(":")[0])]
        listed = ", ".join(f"{key} ({name})" for key, name in sorted(known.items())) or "none in use now"
        if len(found) != 1:
            what = f"names {len(found)} nodes" if found else "is not a node"
            return -1, "", f"{spec!r} {what} of dispyscheduler; give addr:port or a name of: {listed}"
        key = found[0]
        limit = self.side.node_cpus.get(key, 0)
        wanted = limit if cpus == 0 else limit + cpus if cpus < 0 else min(cpus, limit)
        if wanted <= 0:
            return -1, "", f"{cpus} leaves none of the {limit} CPUs of {key}"
        if wanted == limit:
            self.side.cpu_limits.pop(key, None)
        else:
            self.side.cpu_limits[key] = wanted
        for comp in self.comps.values():
            if comp.backend is not None:
                comp.backend.limit_node(key, wanted)
        log.info("node %s (%s): %d of its %d CPUs used from now on, for every computation (set by a client, "
                 "--cooperative)", key, known[key], wanted, limit)
        return wanted, key, ""

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
        m.NodeCpusRequest: _on_node_cpus,
    }


def clean_prefix(prefix: Path) -> None:
    """``--clean``: what an earlier scheduler left under its prefix (computations' files) goes."""
    if not prefix.is_dir():
        return
    for child in prefix.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    log.info("cleaned %s", prefix)


def default_prefix() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"dispy-scheduler-{uid}"
