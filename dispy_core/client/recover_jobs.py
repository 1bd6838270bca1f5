"""``dispy.recover_jobs``: after a client crashed, get its jobs' results from the nodes that ran them.

Reads the recover file (``client/recovery.py``), takes the computation over on each node
(``JobsRecover``), collects the kept results and those of jobs still running, then closes the
computation there so the node serves others again. Each job comes back once: with its result, or
Abandoned with the reason the node could not give it (unreachable, never arrived, dropped).
"""

from __future__ import annotations

import asyncio
import logging
import time

from dispy_core import __version__
from dispy_core.channel import Channel
from dispy_core.client.futures import load_exception
from dispy_core.client.job import DispyJob
from dispy_core.client.recovery import RecoverRecord, latest_recover_file, read_recover_file
from dispy_core.config import load_config
from dispy_core.errors import DispyError, ProtocolError
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.protocol.session import DerivedKey
from dispy_core.status import JobStatus

log = logging.getLogger("dispy")

__all__ = ["recover_jobs"]


def recover_jobs(recover_file: str | None = None, timeout: float | None = None, terminate_pending: bool = False,
                 secret: str | None = None) -> list[DispyJob]:
    """The jobs a crashed client had sent to nodes, with their results (see the client API reference).

    ``timeout``: seconds to wait for jobs still running; those that have not finished by then are returned
    as Running and go on (recover them again later), or, with ``terminate_pending``, are terminated.
    ``secret`` (an extension) is needed only if the recover file was written without its key.
    """
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    record = read_recover_file(recover_file or latest_recover_file())
    return asyncio.run(_recover(record, timeout, terminate_pending, secret))


async def _recover(record: RecoverRecord, timeout: float | None, terminate: bool,
                   secret: str | None) -> list[DispyJob]:
    header = record.header
    config = load_config("client", certfile=header.get("certfile"), keyfile=header.get("keyfile"),
                         cafile=header.get("cafile"))
    plugins = DispyPluginManager(config)
    key: str | bytes = secret if secret is not None else DerivedKey(bytes.fromhex(str(header.get("key", ""))))
    node = _NodeRecovery(record, plugins, config.msg_timeout, key)
    deadline = None if timeout is None else time.monotonic() + timeout
    results = await asyncio.gather(*(node.recover(k, uids, deadline, terminate)
                                     for k, uids in record.pending.items() if uids))
    jobs = [job for group in results for job in group]
    for uid in record.unsent:
        job = DispyJob(uid, (), {})
        _NodeRecovery._abandon({uid: job}, "the client died before sending the job to any node: submit it again")
        jobs.append(job)
    for job in jobs:
        job.id = record.ids.get(job._uid, job._uid)
    record.rewrite()
    jobs.sort(key=lambda job: job._uid)
    return jobs


class _NodeRecovery:
    """Recovers the jobs one node has, on one connection."""

    def __init__(self, record: RecoverRecord, plugins: DispyPluginManager, msg_timeout: float,
                 key: str | bytes) -> None:
        self.record = record
        self.plugins = plugins
        self.msg_timeout = msg_timeout
        self.key = key
        self.serializer = plugins.make_serializer(record.header.get("serializer") or None)
        self.program = record.header.get("kind") == "program"

    async def recover(self, node_key: str, uids: set[int], deadline: float | None,
                      terminate: bool) -> list[DispyJob]:
        jobs = {uid: DispyJob(uid, (), {}) for uid in uids}
        host, _, port = node_key.rpartition(":")
        for job in jobs.values():
            job.ip_addr = host
        try:
            channel = await Channel.connect(
                self.plugins.make_transport("tcp"), host, int(port), secret=self.key,
                serializers={self.serializer.name: self.serializer}, serializer=self.serializer.name,
                timeout=self.msg_timeout, name="recover_jobs", software=f"neodispy {__version__}")
        except (ProtocolError, DispyError, OSError) as exc:
            return self._abandon(jobs, f"cannot reach node {node_key} to recover the job: {exc}")
        arrived = asyncio.Event()
        waiting: set[int] = set()  # results announced by the node and not in yet
        got: dict[int, m.JobResult] = {}  # may come in the same read as the reply, before it is looked at

        def take(msg: m.JobResult) -> None:
            self._fill(jobs[msg.job_uid], channel, msg)
            waiting.discard(msg.job_uid)
            if not waiting:
                arrived.set()

        def on_message(msg: m.Message) -> None:
            if isinstance(msg, m.JobResult) and msg.job_uid in jobs and msg.job_uid not in got:
                got[msg.job_uid] = msg
                if msg.job_uid in waiting:
                    take(msg)
            elif isinstance(msg, m.Ping):
                channel.send_nowait(m.Pong(msg.req_id))

        reader = asyncio.ensure_future(channel.run(on_message))
        try:
            reply = await channel.request(m.JobsRecover(channel.next_req_id(), self.record.comp_id, sorted(uids)),
                                          self.msg_timeout)
            assert isinstance(reply, m.JobsRecovered)
            waiting.update(set(reply.kept) | set(reply.running))
            for uid in list(waiting):
                if uid in got:
                    take(got[uid])
            why = reply.error or "the node has no record of it (it never arrived there, or its computation "\
                                 "was closed)"
            self._abandon({uid: jobs[uid] for uid in reply.unknown if uid in jobs}, f"node {node_key}: {why}")
            for uid in waiting:
                jobs[uid].status = JobStatus.Running  # until its result comes
            if waiting:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(arrived.wait(), left)
                except TimeoutError:
                    pass
            await self._finish(channel, jobs, waiting, terminate)
        except (DispyError, OSError, AssertionError) as exc:
            log.warning("recovering jobs from node %s: %s", node_key, exc)
            left_over = {uid: job for uid, job in jobs.items() if job.status in (JobStatus.Created, JobStatus.Running)}
            self._abandon(left_over, f"node {node_key}: {exc}")
            waiting.clear()
            waiting.update(left_over)  # still on the node, perhaps: a later recover_jobs may get them
        finally:
            await channel.close("recover_jobs done")
            reader.cancel()
        self.record.pending[node_key] = set(waiting)
        return list(jobs.values())

    async def _finish(self, channel: Channel, jobs: dict[int, DispyJob], waiting: set[int], terminate: bool) -> None:
        """All in (or time is up): release the node, or leave the jobs still running to finish there."""
        comp_id = self.record.comp_id
        if waiting and not terminate:
            got = [uid for uid in jobs if uid not in waiting]
            channel.send_nowait(m.ResultsAck(comp_id, got))  # not returned twice by a later recover_jobs
            log.info("recover_jobs: %d jobs still running on %s; they go on (recover them again later)",
                     len(waiting), channel.peer)
            return
        reply = await channel.request(m.ComputationClose(channel.next_req_id(), comp_id, terminate=bool(waiting)),
                                      self.msg_timeout + 60.0)
        if isinstance(reply, m.Error):
            raise DispyError(f"closing the computation: {reply.message}")
        for uid in waiting:
            jobs[uid].status = JobStatus.Terminated
            jobs[uid].exception = "terminated by recover_jobs(terminate_pending=True)"
        waiting.clear()

    def _fill(self, job: DispyJob, channel: Channel, msg: m.JobResult) -> None:
        try:
            job.result = channel.session.loads(msg.result) if msg.result else None
        except Exception as exc:  # a class the recovering program does not have, for example
            job.exception = f"cannot load result: {exc}"
        if self.program:
            job.stdout, job.stderr = msg.stdout, msg.stderr
        else:
            job.stdout = msg.stdout.decode("utf-8", "replace")
            job.stderr = msg.stderr.decode("utf-8", "replace")
        if msg.exception:
            job.exception = msg.exception
        if msg.exception_object:  # job.future raises the original, as for a job the program got itself
            job._exc_object = load_exception(msg.exception_object, channel.session.loads)
        job.start_time, job.end_time = msg.start_time or None, msg.end_time or None
        job.status = msg.status
        job._finish()

    @staticmethod
    def _abandon(jobs: dict[int, DispyJob], reason: str) -> list[DispyJob]:
        for job in jobs.values():
            job.status = JobStatus.Abandoned
            job.exception = reason
            job._finish()
        return list(jobs.values())

