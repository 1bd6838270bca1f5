"""The client driver: carries out what ClusterState decides, and turns what nodes say into its events.

Runs only on the cluster's loop thread. Which job goes where, and what happens to jobs when a node
changes, is ``dispy_core.state.cluster``'s; this module sends, loads results and tells the program.
The life of each node connection (connect, set up, close) is ``client/connections.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from dispy_core.channel import Channel
from dispy_core.client.connections import NodeConn, NodeLife
from dispy_core.client.files import save_job_file
from dispy_core.client.futures import load_exception
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode, DispyNodeAvailInfo
from dispy_core.errors import DispyError
from dispy_core.interfaces import JobView
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev
from dispy_core.state.cluster import PIPELINE, ClusterState
from dispy_core.status import FINAL_JOB_STATES, JobStatus, NodeStatus, RefusalReason

if TYPE_CHECKING:
    from dispy_core.client.cluster import JobCluster

log = logging.getLogger("dispy")

__all__ = ["TICK", "ClientDriver"]

TICK = 1.0
"""Seconds between the ``Tick`` events the state gets."""


class ClientDriver:
    """One cluster's loop-side half: the state machine, the jobs in flight and the node connections."""

    def __init__(self, cluster: JobCluster) -> None:
        self.cluster = cluster
        self.comp_id = cluster.comp_id
        self.state = ClusterState(cluster.scheduler, recover=self._recover, reentrant=cluster.reentrant,
                                  allowed_failures=cluster.allowed_failures,
                                  deep_pipeline=getattr(cluster, "deep_pipeline", PIPELINE))
        self.jobs: dict[int, DispyJob] = {}
        self.life = NodeLife(self)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.recover_log = cluster._recover_log
        self._last_uid = (0, 0)  # the last job submitted, and the last one the recover file knows of
        self._new_ids: list[tuple[int, Any]] = []  # (uid, id) of jobs submitted with an id, not yet recorded
        self._acks: collections.deque[tuple[str, int]] = collections.deque()
        """(node, job uid) of results the program has for good: told to their nodes at the next tick."""

    # ------------------------------------------------------------------ events in, instructions out
    def feed(self, event: ev.ClusterEvent) -> list[ev.ClusterInstruction]:
        """Hand ``event`` to the state and carry out its instructions, in order."""
        instructions = self.state.handle(event)
        for instruction in instructions:
            if isinstance(instruction, ev.NotifyJob):
                self._notify_job(instruction)
            elif isinstance(instruction, ev.SendJobs):
                self._send_jobs(instruction)
            elif isinstance(instruction, ev.SendCancel):
                conn = self.life.nodes.get(instruction.node_id)
                if conn is not None and conn.channel is not None and not conn.channel.closed:
                    conn.channel.send_nowait(m.JobCancel(self.comp_id, instruction.uid))
            elif isinstance(instruction, ev.NotifyNode):
                self._notify_node(instruction)
            elif isinstance(instruction, ev.CloseNode):
                conn = self.life.nodes.get(instruction.node_id)
                if conn is not None and conn.drained is not None:
                    conn.drained.set()  # the close operation waiting for this node goes on
        return instructions

    async def tick(self, period: float = TICK) -> None:
        """Time for the state (its probes of shared nodes) and for contacting failed nodes again."""
        while not self.cluster._closed:
            await asyncio.sleep(period)
            now = time.time()
            self.feed(ev.Tick(now))
            self.life.tick(now)
            self._record_submitted()
            self.send_acks()

    def _record_submitted(self) -> None:
        last, known = self._last_uid
        if self.recover_log is not None and last != known:
            self.recover_log.submitted(last, self._new_ids)
            self._last_uid = (last, last)
            self._new_ids = []

    def send_acks(self) -> None:
        """Let nodes forget the results the program has for good (they keep each until then)."""
        by_node: dict[str, list[int]] = {}
        while self._acks:
            node_key, uid = self._acks.popleft()
            by_node.setdefault(node_key, []).append(uid)
        for node_key, uids in by_node.items():
            conn = self.life.nodes.get(node_key)
            if conn is not None and conn.channel is not None and not conn.channel.closed:
                conn.channel.send_nowait(m.ResultsAck(self.comp_id, uids))

    def _delivered(self, uid: int, node_key: str | None) -> None:
        """The program has the job's final status (its callbacks ran): recorded, then acknowledged to the node.

        Called on the callback thread when there are callbacks, else on the loop thread."""
        if self.recover_log is not None:
            self.recover_log.done(uid)
        if node_key is not None:
            self._acks.append((node_key, uid))

    def submit_many(self, jobs: list[DispyJob]) -> None:
        """Jobs submitted together: one dispatch for all (and what they send to each node leaves in one
        write: channels cork)."""
        if len(jobs) == 1:
            self.submit(jobs[0])
            return
        events = []
        for job in jobs:
            self._enter(job)
            events.append(ev.JobSubmitted(job._uid, job.submit_time or time.time(), job._pinned))
        self.feed(ev.JobsSubmitted(tuple(events)))

    def submit(self, job: DispyJob) -> None:
        self._enter(job)
        self.feed(ev.JobSubmitted(job._uid, job.submit_time or time.time(), job._pinned))

    def _enter(self, job: DispyJob) -> None:
        self.jobs[job._uid] = job
        self._last_uid = (max(self._last_uid[0], job._uid), self._last_uid[1])
        if self.recover_log is not None and job.id != job._uid:
            self._new_ids.append((job._uid, job.id))

    def _recover(self, job: JobView, failure: str) -> str | None:
        decision = self.cluster.plugins.hook.dispy_recover(job=job, failure=failure)
        if decision not in (None, "resubmit", "abandon"):
            log.warning("dispy_recover returned %r; expected 'resubmit', 'abandon' or None", decision)
            return None
        return str(decision) if decision is not None else None

    # ------------------------------------------------------------------ sending
    def _send_jobs(self, send: ev.SendJobs) -> None:
        conn = self.life.nodes.get(send.node_id)
        if self.recover_log is not None and conn is not None:  # before they leave: a crash right after loses nothing
            self._record_submitted()
            self.recover_log.sent(send.node_id, send.uids)
        for uid in send.uids:
            job = self.jobs[uid]
            if conn is None or conn.channel is None:
                self.feed(ev.SendFailed(uid, send.node_id, "not connected", time.time()))
                continue
            self._bind(job, conn)
            if job._files:  # its files go first: a task, as they are streamed in chunks
                self.spawn(self._transmit(conn, conn.channel, job))
            elif not conn.channel.send_nowait(m.JobSubmit(self.comp_id, uid, job._payload, [])):
                self.feed(ev.SendFailed(uid, send.node_id, conn.channel.close_reason or "connection closed",
                                        time.time()))

    def _bind(self, job: DispyJob, conn: NodeConn) -> None:
        if job._node_key != conn.node.key or job.start_time is None:
            job._node_key = conn.node.key
            job.ip_addr = conn.node.ip_addr
            job.start_time = time.time()

    async def _transmit(self, conn: NodeConn, channel: Channel, job: DispyJob) -> None:
        try:
            for path, relpath in job._files:
                await self.life.send_file(conn, channel, path, relpath, job._uid)
            await channel.send(m.JobSubmit(self.comp_id, job._uid, job._payload,
                                           [relpath for _, relpath in job._files]))
        except (DispyError, OSError, ValueError) as exc:
            self.feed(ev.SendFailed(job._uid, conn.node.key, str(exc), time.time()))

    async def cancel(self, uid: int) -> int:
        """0 if the job is cancelled (or its node asked to), -1 if it is not active."""
        record = self.state.jobs.get(uid)
        waiting = record is not None and record.waiting
        if not self.feed(ev.CancelAsked(uid, time.time())):
            return -1
        job = self.jobs.get(uid)
        if waiting and job is not None:  # the node answers at once for a job still waiting there
            deadline = time.monotonic() + self.cluster.config.msg_timeout
            while not job.finished and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        return 0

    # ------------------------------------------------------------------ what nodes say
    def handle(self, conn: NodeConn, msg: m.Message) -> None:
        key = conn.node.key
        if isinstance(msg, m.JobResult):
            run_time = max(0.0, msg.end_time - msg.start_time) if msg.end_time else 0.0
            if not self.feed(ev.ResultArrived(msg.job_uid, key, msg.status, run_time, time.time(), msg)):
                if self.recover_log is not None:
                    self._acks.append((key, msg.job_uid))  # not wanted: the node need not keep it
                log.debug("result of job %s from node %s dropped: the job is not there any more (cancelled, "
                         "or ended elsewhere)", msg.job_uid, conn.node.ip_addr)
        elif isinstance(msg, m.JobStarted):
            job = self.jobs.get(msg.job_uid)
            if job is not None and self.feed(ev.JobStarted(msg.job_uid, key, msg.start_time)):
                job.start_time = msg.start_time
                if msg.ip_addr:  # from a scheduler: the node it runs on
                    job.ip_addr = msg.ip_addr
        elif isinstance(msg, m.JobProvisional):
            self.feed(ev.ProvisionalArrived(msg.job_uid, key, msg))
        elif isinstance(msg, m.JobLost):
            log.warning("job %s was running on node %s when the computation's host there died: %s", msg.job_uid,
                        conn.node.ip_addr, msg.reason)
            self.feed(ev.JobLost(msg.job_uid, key, msg.reason, time.time()))
        elif isinstance(msg, m.JobRefused):
            log.debug("node %s refused job %s: %s", conn.node.ip_addr, msg.job_uid, msg.reason)
            self.feed(ev.Refused(msg.job_uid, key, _refusal_reason(msg), time.time()))
        elif isinstance(msg, m.JobFile):
            self._on_job_file(conn, msg)
        elif isinstance(msg, m.ComputationClosed):  # not asked for: the node lost the computation's host
            self.life.computation_lost(conn)
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

    def _on_pulse(self, conn: NodeConn, msg: m.Pulse) -> None:
        node = conn.node
        node.avail_info = DispyNodeAvailInfo.from_mapping(msg.avail_info)
        node.avail_cpus = msg.avail_cpus
        node.update_time = time.time()
        self.cluster.plugins.hook.dispy_pulse_received(node=node, pulse=dict(msg.avail_info, busy=msg.busy,
                                                                             avail_cpus=msg.avail_cpus))
        if node.avail_info is not None:
            self.cluster._notify_cluster(NodeStatus.AvailInfo, node, None)

    def _on_job_file(self, conn: NodeConn, msg: m.JobFile) -> None:
        """A job's ``dispy_send_file``: saved under the current directory, never outside it."""
        try:
            target = save_job_file(os.getcwd(), msg.relpath, msg.data, self.cluster.max_file_size)
        except (DispyError, OSError, ValueError) as exc:
            log.error("file %r sent by job %s from node %s refused: %s", msg.relpath, msg.job_uid,
                      conn.node.ip_addr, exc)
            return
        log.debug("saved %s (%d bytes) from node %s", target, len(msg.data), conn.node.ip_addr)

    # ------------------------------------------------------------------ telling the program
    def _notify_job(self, notice: ev.NotifyJob) -> None:
        job = self.jobs.get(notice.uid)
        if job is None:
            return
        conn = self.life.nodes.get(job._node_key or "")
        if notice.status == JobStatus.Running and conn is not None:
            self._bind(job, conn)
        if isinstance(notice.outcome, m.JobResult):
            self._fill_result(job, conn, notice.outcome)
        elif isinstance(notice.outcome, m.JobProvisional):
            try:
                job.result = self._loads(conn, notice.outcome.result)
            except Exception as exc:
                log.warning("job %s: cannot load provisional result: %s", job.id, exc)
                return
        if notice.reason is not None:
            job.exception = notice.reason
        job.status = notice.status
        final = notice.status in FINAL_JOB_STATES
        if final and job.end_time is None:
            job.end_time = time.time()
        self._announce(job, notice.previous, conn)
        if final:
            del self.jobs[notice.uid]
            if self.recover_log is not None:
                from_node = job._node_key if isinstance(notice.outcome, m.JobResult) else None
                callbacks = self.cluster._callbacks
                if callbacks is not None:  # after the program's callbacks for it have run
                    callbacks.post(self._delivered, notice.uid, from_node)
                else:  # before the program can see it done
                    self._delivered(notice.uid, from_node)
            self.cluster._job_done(job)

    def _loads(self, conn: NodeConn | None, data: bytes) -> Any:
        if conn is None or conn.channel is None:
            raise DispyError("its node is gone")
        return conn.channel.session.loads(data)

    def _fill_result(self, job: DispyJob, conn: NodeConn | None, msg: m.JobResult) -> None:
        try:
            job.result = self._loads(conn, msg.result) if msg.result else None
        except Exception as exc:  # a result class missing on the client, for example
            job.result = None
            job.exception = f"cannot load result: {exc}"
        if self.cluster._pkg.kind == "program":
            job.stdout, job.stderr = msg.stdout, msg.stderr
        else:
            job.stdout = msg.stdout.decode("utf-8", "replace")
            job.stderr = msg.stderr.decode("utf-8", "replace")
        if msg.exception:
            job.exception = msg.exception
        if msg.exception_object:  # for job.future to raise the original (None if its class is not here)
            job._exc_object = load_exception(msg.exception_object, lambda data: self._loads(conn, data))
        now = time.time()
        job.start_time = msg.start_time or job.start_time
        job.end_time = msg.end_time or now
        if conn is not None:
            node = conn.node
            node.update_time = now
            node.jobs_done += 1
            node.cpu_time += max(0.0, (msg.end_time - msg.start_time)) if msg.end_time else 0.0

    def _announce(self, job: DispyJob, previous: int | None, conn: NodeConn | None) -> None:
        """The hook and the program's callbacks for a job's new status."""
        hook = self.cluster.plugins.hook.dispy_job_status
        if hook.get_hookimpls():  # a tenth of the call's cost when no plugin listens (three per job)
            hook(job=job, previous=previous)
        callbacks = self.cluster._callbacks
        if callbacks is None:
            return
        seen: Any = job
        if job.status == JobStatus.ProvisionalResult:
            seen = copy.copy(job)  # the callback sees this provisional value even after later ones arrive
        if self.cluster.job_status is not None and job.status not in (JobStatus.Created, JobStatus.Running):
            callbacks.post(self.cluster.job_status, seen)
        if self.cluster.cluster_status is not None:
            node = self.sync(conn) if conn is not None else None
            callbacks.post(self.cluster.cluster_status, job.status, node, seen)

    def _notify_node(self, notice: ev.NotifyNode) -> None:
        conn = self.life.nodes.get(notice.node_id) or self.life.leaving.get(notice.node_id)
        if conn is not None:
            self.node_status(notice.status, self.sync(conn))

    def node_status(self, status: NodeStatus, node: DispyNode) -> None:
        self.cluster.plugins.hook.dispy_node_status(node=node, previous=None)
        self.cluster._notify_cluster(status, node, None)

    def sync(self, conn: NodeConn) -> DispyNode:
        """The program's DispyNode brought up to date from the state and the channel."""
        node = conn.node
        record = self.state.nodes.get(node.key)
        if record is not None:
            node.busy, node.cpus = record.busy, record.cpus
        elif conn.state == "closed":
            node.busy = 0
        if conn.channel is not None:
            node.tx, node.rx = conn.channel.tx_bytes, conn.channel.rx_bytes
        return node

    # ------------------------------------------------------------------ the end
    async def shutdown(self, terminate: bool) -> None:
        self.feed(ev.ClusterClosing(terminate, time.time()))
        await self.life.close_all(terminate)
        for task in list(self.tasks):
            task.cancel()

    def spawn(self, coro: Any, on_done: Any = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)
        return task


def _refusal_reason(msg: m.JobRefused) -> RefusalReason:
    try:
        return RefusalReason(msg.code)
    except ValueError:  # a node that does not send the code
        return RefusalReason.NO_FREE_CPU if msg.reason == "no free CPU" else RefusalReason.NOT_READY
