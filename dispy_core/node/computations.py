"""A node's computations: opened in their own directory, set up by the executor, closed, files received.

The node driver's half that deals with computations as a whole (``NodeServer`` keeps the connections and
the operator's controls; ``JobRunner`` the jobs). CPUs and waiting lines stay ``NodeState``'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispy_core.channel import Channel, _fmt
from dispy_core.computation import Computation
from dispy_core.errors import DispyError, ExecutionError, SetupError, UnsafePathError
from dispy_core.interfaces import ComputationSpec, JobOutcome
from dispy_core.node.files import ComputationFiles, listing
from dispy_core.node.kept import KEPT_DIR, KeptResults
from dispy_core.node.liveness import send_quietly
from dispy_core.paths import check_relpath, safe_join
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev

if TYPE_CHECKING:
    from dispy_core.node.server import NodeServer

log = logging.getLogger("dispy.node")

__all__ = ["ComputationHost", "HostedComputation"]


@dataclass
class HostedComputation:
    """What the node driver keeps of a computation: its client, files and the bytes of waiting jobs.

    CPUs, waiting lines and running jobs are ``NodeState``'s."""

    comp_id: str
    name: str
    channel: Channel
    files: ComputationFiles
    cleanup_files: bool
    spec: ComputationSpec | None = None
    ready: bool = False
    closing: bool = False
    held: dict[int, m.JobSubmit] = field(default_factory=dict)
    """Jobs accepted and not yet started or refused, by uid."""
    kept: KeptResults | None = None
    """Results not yet acknowledged, when the client keeps a recover file (None: it does not)."""
    detached_at: float | None = None
    """When its client went away without closing it (its jobs go on, for ``recover_jobs``)."""

    @property
    def work_dir(self) -> Path:
        return self.files.work_dir


class ComputationHost:
    """Opens, sets up and closes the node's computations, and writes the files their clients send."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        old = self.server.computations.get(msg.comp_id)
        if old is not None and old.channel is not channel:
            # Its client again, on a new connection (after a lost one): the old instance goes, jobs and all;
            # the client has already sent them elsewhere or given them up.
            log.info("computation %s (%s) opened again by %s: closing the instance of the connection it lost",
                     old.name, old.comp_id, _fmt(channel.peer))
            self.server._spawn(self._reopen(old, channel, msg))
            return
        self._open(channel, msg)

    async def _reopen(self, old: HostedComputation, channel: Channel, msg: m.ComputationOpen) -> None:
        if not old.channel.closed:
            await old.channel.close("the client connected again")
        await self.close_computation(old, terminate=True)
        if not channel.closed:
            self._open(channel, msg)

    def _open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        try:
            work_dir, existing = self._admit(msg)
        except (DispyError, OSError, ValueError) as exc:
            channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False, error=str(exc)))
            return
        options = self.server.options
        comp = HostedComputation(msg.comp_id, msg.name, channel,
                                 ComputationFiles(work_dir, options.max_file_size, existing),
                                 cleanup_files=msg.cleanup_files or options.force_cleanup)
        if msg.options.get("recover") is True:
            comp.kept = KeptResults(self.server.dest_path_prefix / KEPT_DIR / msg.comp_id, self.server.kept_budget)
        comp.spec = ComputationSpec(Computation.of(msg), work_dir, self.server.serializer.name,
                                    node_name=self.server.name,
                                    node_ip_addr=self.server.host, setup_timeout=msg.setup_timeout,
                                    extra=self._executor_extra(msg.options))
        self.server.computations[msg.comp_id] = comp
        announce = msg.options.get("announce_starts") is True  # a scheduler's: see ev.CompOpened
        queue = msg.options.get("queue_per_cpu")
        queue = queue if type(queue) is int and queue >= 1 else 1
        self.server._apply(self.server.state.handle(ev.CompOpened(msg.comp_id, msg.cpus, announce, queue)))
        self.server._served += 1
        interval = msg.options.get("pulse_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0 \
                and channel not in self.server._pulsing:
            self.server._pulsing.add(channel)
            self.server._spawn(self.server._pulse_loop(channel, max(0.1, float(interval))))
        log.info("computation %s (%s) from %s opened in %s", msg.name, msg.comp_id, _fmt(channel.peer), work_dir)
        channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, True, cpus=self._comp_cpus(msg.comp_id),
                                               dest_path=str(work_dir)))

    def _admit(self, msg: m.ComputationOpen) -> tuple[Path, set[str] | None]:
        """The computation's directory, made, and what it held already (None: it is new); raises with the
        reason when the node cannot take it, or when ``dest_path`` is another live computation's."""
        if self.server.quitting or self.server._stopped.is_set():
            raise ExecutionError(f"node {self.server.name} is shutting down")
        if self.server.options.serve and self.server._served >= self.server.options.serve:
            raise ExecutionError(f"node {self.server.name} has served the {self.server.options.serve} computations it "
                                 f"was started for (--serve) and takes no more")
        if msg.comp_id in self.server.computations:
            raise ExecutionError(f"computation {msg.comp_id} is already open on this node")
        check_relpath(msg.comp_id)
        prefix = self.server.dest_path_prefix
        work_dir = safe_join(prefix, msg.dest_path) if msg.dest_path else prefix / msg.comp_id
        if work_dir == prefix or work_dir.is_relative_to(prefix / KEPT_DIR):
            raise ExecutionError(f"dest_path {msg.dest_path!r} is the node's own directory, not one a computation "
                                 f"may use")
        for other in self.server.computations.values():
            if work_dir == other.work_dir or work_dir.is_relative_to(other.work_dir) \
                    or other.work_dir.is_relative_to(work_dir):
                gone = (" (its client went away; it is kept for recover_jobs, which releases it)"
                        if other.detached_at is not None else "")
                raise ExecutionError(f"dest_path {msg.dest_path!r} is in use by computation {other.name}{gone} on "
                                     f"this node; give another one (or none: each computation then gets its own)")
        existing = listing(work_dir) if work_dir.is_dir() else None
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return work_dir, existing

    def _comp_cpus(self, comp_id: str) -> int:
        record = self.server.state.comps.get(comp_id)
        return record.cpus if record is not None else 0

    def _executor_extra(self, options: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.server.options.init_file:
            extra["init_file"] = self.server.options.init_file
        if self.server.options.max_file_size:
            extra["max_file_size"] = self.server.options.max_file_size  # dispy_send_file refuses larger files
        wanted = options.get("jobs_per_process", 1)
        if type(wanted) is int and wanted > 1:
            extra["jobs_per_process"] = min(wanted, self.server.max_jobs_per_process)
        limits = options.get("job_limits")
        if isinstance(limits, dict) and limits:
            extra["job_limits"] = limits  # as asked: the executor checks them and applies its own ceilings
        return extra

    def setup(self, channel: Channel, msg: m.ComputationSetup) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None:
            self.server._spawn(self._setup(comp, msg.req_id))

    async def _setup(self, comp: HostedComputation, req_id: int) -> None:
        assert comp.spec is not None
        try:
            await self.server.executor.open(comp.spec, _Events(self.server))
        except (SetupError, ExecutionError, OSError) as exc:
            log.warning("setup of computation %s failed: %s", comp.name, exc)
            self.server.computations.pop(comp.comp_id, None)
            self.server._apply(self.server.state.handle(ev.CompClosed(comp.comp_id, time.time())))
            self.remove_files(comp)
            await send_quietly(comp.channel, m.ComputationReady(req_id, comp.comp_id, False, error=str(exc)))
            self.check_served()
            return
        comp.ready = True
        self.server._apply(self.server.state.handle(ev.CompReady(comp.comp_id)))
        await comp.channel.send(m.ComputationReady(req_id, comp.comp_id, True, cpus=self._comp_cpus(comp.comp_id),
                                                   dest_path=str(comp.work_dir)))

    def close(self, channel: Channel, msg: m.ComputationClose) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is not None:
            self.server._spawn(self._close_and_reply(comp, msg))

    async def _close_and_reply(self, comp: HostedComputation, msg: m.ComputationClose) -> None:
        await self.close_computation(comp, msg.terminate)
        if not comp.channel.closed:
            await comp.channel.send(m.ComputationClosed(msg.req_id, comp.comp_id))

    async def close_computation(self, comp: HostedComputation, terminate: bool) -> None:
        if self.server.computations.get(comp.comp_id) is not comp or comp.closing:
            return
        comp.closing = True  # no new jobs; results of running ones still reach the client
        self.server._apply(self.server.state.handle(ev.CompClosing(comp.comp_id)))
        self.server._closing += 1
        try:
            if comp.ready:
                try:
                    await self.server.executor.close(comp.comp_id, terminate=terminate)
                except (DispyError, OSError) as exc:
                    log.warning("closing computation %s: %s", comp.name, exc)
            self.server.computations.pop(comp.comp_id, None)
            self.remove_files(comp)
            if comp.kept is not None:
                comp.kept.clear()
        finally:
            self.server._closing -= 1
        done = self.server.state.comps[comp.comp_id].jobs_done if comp.comp_id in self.server.state.comps else 0
        # frees the CPUs of jobs the executor never reported
        self.server._apply(self.server.state.handle(ev.CompClosed(comp.comp_id, time.time())))
        log.info("computation %s (%s) closed after %d jobs", comp.name, comp.comp_id, done)
        self.check_served()
        self.server._maybe_quit()

    def computation_broken(self, comp: HostedComputation, reason: str) -> None:
        """The computation's host died: close it here and tell its client, which sets it up again."""
        if comp.closing or self.server.computations.get(comp.comp_id) is not comp:
            return
        log.warning("computation %s (%s): %s; closing it, its client sets it up again", comp.name, comp.comp_id,
                    reason)
        self.server._spawn(self._close_broken(comp))

    async def _close_broken(self, comp: HostedComputation) -> None:
        await self.close_computation(comp, terminate=True)
        if not comp.channel.closed:
            await send_quietly(comp.channel, m.ComputationClosed(0, comp.comp_id))

    def check_served(self) -> None:
        serve = self.server.options.serve
        if serve and self.server._served >= serve and not self.server.computations and not self.server._closing:
            self.server.request_quit(f"served {serve} computation{'s' if serve > 1 else ''}")

    def remove_files(self, comp: HostedComputation) -> None:
        comp.files.remove(self.server.dest_path_prefix, comp.cleanup_files)

    def _owned(self, channel: Channel, comp_id: str, req_id: int) -> HostedComputation | None:
        comp = self.server.computations.get(comp_id)
        if comp is None or comp.channel is not channel:
            self.server._spawn(self.server._reply_error(channel, req_id, "unknown-computation",
                                          f"no computation {comp_id!r} of yours on node {self.server.name}"))
            return None
        return comp

    def file(self, channel: Channel, msg: m.FileChunk) -> None:
        comp = self._owned(channel, msg.comp_id, msg.req_id)
        if comp is None:
            return
        try:
            complete = comp.files.write(msg)
        except (UnsafePathError, OSError, ValueError) as exc:
            log.warning("file %r for %s refused: %s", msg.relpath, comp.name, exc)
            channel.send_nowait(m.FileAck(msg.req_id, False, str(exc)))
            return
        if complete:
            channel.send_nowait(m.FileAck(msg.req_id, True))


class _Events:
    """The executor's callbacks into the server (on the server's loop)."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None:
        """Not forwarded: the client marks a job Running when it dispatches it, and the result carries
        the real start time (one frame per job saved on the hot path)."""

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None:
        if len(result) > self.server.max_payload - 4096:
            text = (f"provisional result of {len(result)} bytes from job {job_uid} not sent: above max_payload "
                    f"({self.server.max_payload} bytes)")
            log.warning("%s (computation %s)", text, comp_id)
            self.server._send_to_owner(comp_id, m.Error("payload-refused", text))
            return
        self.server._send_to_owner(comp_id, m.JobProvisional(comp_id, job_uid, result))

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        self.server.jobs.job_file(comp_id, job_uid, relpath, data)

    def node_shutdown(self, comp_id: str) -> None:
        """The computation's setup, cleanup or a job called ``dispynode_shutdown()``."""
        self.server._client_shutdown(comp_id)

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.server.jobs.done(comp_id, job_uid, outcome)
