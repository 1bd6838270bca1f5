"""Carrying out NodeState's job instructions: the bytes of waiting jobs, the executor, the results.

The node never loads a job's arguments or result: they pass from the client's frame to the executor
and back as opaque bytes. This module holds them while ``NodeState`` decides when each job starts.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import TYPE_CHECKING

from dispy_core.channel import Channel
from dispy_core.errors import ComputationBroken, DispyError
from dispy_core.interfaces import JobOutcome
from dispy_core.node.liveness import send_quietly
from dispy_core.protocol import messages as m
from dispy_core.state import events as ev
from dispy_core.status import JobStatus, RefusalReason

if TYPE_CHECKING:
    from dispy_core.node.server import HostedComputation, NodeServer

log = logging.getLogger("dispy.node")

PAYLOAD_MARGIN = 4096
"""What a message adds to its payload: a payload must leave that much room under max_payload."""

__all__ = ["JobRunner"]


class JobRunner:
    """The node's jobs: turns job messages and executor reports into NodeState events, and carries out
    the instructions."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self._outcomes: dict[tuple[str, int], JobOutcome] = {}
        self._none_result = bytes(server.serializer.dumps(None))

    def submit(self, channel: Channel, msg: m.JobSubmit) -> None:
        comp = self.server.computations.get(msg.comp_id)
        if comp is None or comp.channel is not channel:
            channel.send_nowait(m.JobRefused(msg.comp_id, msg.job_uid, "computation is not ready here",
                                             "not-ready"))
            return
        comp.held[msg.job_uid] = msg
        self.apply(self.server.state.handle(ev.JobArrived(msg.comp_id, msg.job_uid, time.time())))

    def done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        comp = self.server.computations.get(comp_id)
        if comp is not None:
            comp.files.job_done(job_uid)
        self._outcomes[(comp_id, job_uid)] = outcome
        channel = comp.channel if comp is not None else None
        # the result and the start of the job queued behind it: one write (unless held already)
        held = channel is not None and channel.hold()
        try:
            self.apply(self.server.state.handle(ev.JobEnded(comp_id, job_uid, time.time())))
        finally:
            self._outcomes.pop((comp_id, job_uid), None)
            if held:
                assert channel is not None
                channel.flush()
        if self.server.quitting:
            self.server._maybe_quit()

    def apply(self, instructions: list[ev.NodeInstruction]) -> None:
        """Carry out what NodeState decided, in order."""
        for instruction in instructions:
            comp = self.server.computations.get(instruction.comp_id)
            if isinstance(instruction, ev.StartJob):
                self._start(comp, instruction)
            elif isinstance(instruction, ev.SendResult):
                outcome = self._outcomes.get((instruction.comp_id, instruction.uid))
                if comp is not None and outcome is not None and outcome.lost:
                    comp.channel.send_nowait(m.JobLost(instruction.comp_id, instruction.uid, outcome.exception))
                elif comp is not None and outcome is not None:
                    self.server.recovery.result_ready(comp, self._within_payload(m.JobResult(
                        instruction.comp_id, instruction.uid, int(outcome.status), outcome.result, outcome.stdout,
                        outcome.stderr, outcome.exception, outcome.start_time, outcome.end_time,
                        base64.b64encode(outcome.exception_object).decode() if outcome.exception_object else "")))
            elif isinstance(instruction, ev.RefuseJob):
                self._refuse(comp, instruction)
            elif isinstance(instruction, ev.KillJob):
                executor = self.server.executor
                self.server._spawn(executor.cancel(instruction.comp_id, instruction.uid) if instruction.grace is None
                                   else executor.cancel(instruction.comp_id, instruction.uid, grace=instruction.grace))
            elif isinstance(instruction, ev.ReportCancelled) and comp is not None:
                comp.held.pop(instruction.uid, None)
                comp.channel.send_nowait(m.JobResult(
                    instruction.comp_id, instruction.uid, int(JobStatus.Cancelled), self._none_result,
                    exception="Cancelled", start_time=instruction.time, end_time=instruction.time))

    def _within_payload(self, result: m.JobResult) -> m.JobResult:
        """A result above max_payload cannot travel: the job ends Terminated saying so (and its output's end)."""
        size = (len(result.result) + len(result.stdout) + len(result.stderr) + len(result.exception)
                + len(result.exception_object))
        if size <= self.server.max_payload - PAYLOAD_MARGIN:
            return result
        reason = (f"the job's result and output are {size} bytes, above max_payload ({self.server.max_payload} "
                  f"bytes): return less (write large data to a file and send it with dispy_send_file), or raise "
                  f"max_payload on both sides")
        log.warning("job %s of %s: %s", result.job_uid, result.comp_id, reason)
        tail = 65536
        return m.JobResult(result.comp_id, result.job_uid, int(JobStatus.Terminated), self._none_result,
                           bytes(result.stdout[-tail:]), bytes(result.stderr[-tail:]), reason, result.start_time,
                           result.end_time)

    def _start(self, comp: HostedComputation | None, start: ev.StartJob) -> None:
        msg = comp.held.pop(start.uid, None) if comp is not None else None
        if comp is None or msg is None:
            return
        if start.announce:
            comp.channel.send_nowait(m.JobStarted(start.comp_id, start.uid, start.time))
        try:
            self.server.executor.submit_nowait(start.comp_id, start.uid, msg.args)  # no task per job on the hot path
        except ComputationBroken as exc:  # its host died: the job goes back, the computation is set up again
            self.apply(self.server.state.handle(ev.JobEnded(start.comp_id, start.uid, time.time())))
            comp.channel.send_nowait(m.JobRefused(start.comp_id, start.uid, str(exc), RefusalReason.NOT_READY.value))
            self.server.comps.computation_broken(comp, str(exc))
        except (DispyError, OSError) as exc:
            now = time.time()
            self.done(start.comp_id, start.uid, JobOutcome(
                status=JobStatus.Terminated, exception=f"node could not start the job: {exc}",
                result=self._none_result, start_time=now, end_time=now))

    def _refuse(self, comp: HostedComputation | None, refusal: ev.RefuseJob) -> None:
        if comp is None:
            return
        comp.held.pop(refusal.uid, None)
        msg = m.JobRefused(refusal.comp_id, refusal.uid, refusal.detail or refusal.reason.value, refusal.reason.value)
        if refusal.delay > 0:
            log.debug("job %s of %s refused: %s", refusal.uid, refusal.comp_id, refusal.detail)
            self.server._spawn(self._send_later(comp.channel, msg, refusal.delay))
        else:
            comp.channel.send_nowait(msg)

    async def _send_later(self, channel: Channel, msg: m.Message, delay: float) -> None:
        await asyncio.sleep(delay)
        if not channel.closed:
            await send_quietly(channel, msg)

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None:
        """A job's ``dispy_send_file``: forwarded within ``--max_file_size`` only."""
        limit = self.server.options.max_file_size
        if len(data) > self.server.max_payload - PAYLOAD_MARGIN:
            limit = self.server.max_payload - PAYLOAD_MARGIN
        if limit and len(data) > limit:
            text = (f"file {relpath[:200]!r} of {len(data)} bytes from job {job_uid} not sent: above this node's "
                    f"max_file_size of {limit} bytes")
            log.warning("%s (computation %s)", text, comp_id)
            self.server._send_to_owner(comp_id, m.Error("file-refused", text))  # the client is told, and logs it
            return
        self.server._send_to_owner(comp_id, m.JobFile(comp_id, job_uid, relpath, data))

