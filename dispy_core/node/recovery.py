"""A computation whose client went away: kept running for ``recover_jobs``, handed over, or expired.

A client that keeps a recover file asks for this (``options["recover"]``). When its connection ends
without the computation being closed, the computation is *detached*: its jobs run on, their results go
to disk (``node/kept.py``). ``recover_jobs`` then takes it over on a new connection (``JobsRecover``)
and gets every kept result, then the others as their jobs end. A detached computation nobody takes
over is closed after the zombie interval. A client that does not keep a recover file gets the old
behaviour: its jobs are terminated when its connection ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dispy_core.channel import Channel, _fmt
from dispy_core.protocol import messages as m

if TYPE_CHECKING:
    from dispy_core.node.computations import HostedComputation
    from dispy_core.node.server import NodeServer

log = logging.getLogger("dispy.node")

__all__ = ["Recovery"]


class Recovery:
    """The node's side of ``recover_jobs``: detach, acknowledge, hand over, expire."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def connection_ended(self, channel: Channel) -> None:
        """The client's connection ended: detach what it may recover, terminate the rest."""
        for comp in [c for c in self.server.computations.values() if c.channel is channel]:
            if comp.kept is not None and not comp.closing:
                comp.detached_at = time.time()
                comp.kept.spill()
                log.warning("client %s of computation %s went away; its jobs go on and their results are kept "
                            "for recover_jobs (up to %g min)", _fmt(channel.peer), comp.name, self.keep_minutes)
            else:
                log.warning("client %s of computation %s went away; terminating its jobs", _fmt(channel.peer),
                            comp.name)
                self.server._spawn(self.server.comps.close_computation(comp, terminate=True))

    @property
    def keep_minutes(self) -> float:
        """How long a detached computation is kept: the zombie interval, or an hour when that is off."""
        return self.server.options.zombie_interval or 60.0

    def result_ready(self, comp: HostedComputation, result: m.JobResult) -> None:
        """Send a job's result to its client, keeping it until acknowledged; on disk if the client is gone."""
        if not comp.channel.closed:
            comp.channel.send_nowait(result)
            if comp.kept is not None:
                comp.kept.keep_sent(result)
        elif comp.kept is not None:
            comp.kept.store(result)

    def acknowledged(self, channel: Channel, msg: m.ResultsAck) -> None:
        comp = self.server.computations.get(msg.comp_id)
        if comp is not None and comp.channel is channel and comp.kept is not None:
            comp.kept.acknowledged(msg.job_uids)

    def take_over(self, channel: Channel, msg: m.JobsRecover) -> None:
        """``recover_jobs`` on ``channel``: the computation is its own from now on."""
        comp = self.server.computations.get(msg.comp_id)
        wanted = set(msg.job_uids)
        if comp is None or comp.closing:
            channel.send_nowait(m.JobsRecovered(msg.req_id, msg.comp_id, False, unknown=sorted(wanted),
                                                error="no such computation on this node (closed, or expired "
                                                      "after the zombie interval)"))
            return
        previous = comp.channel
        if previous is not channel:
            comp.channel = channel
            if comp.kept is not None:
                comp.kept.spill()  # sent on the old connection, perhaps never received
            if not previous.closed:  # the old client frozen or cut off, not gone: it is replaced
                self.server._spawn(previous.close("computation taken over by recover_jobs"))
        comp.detached_at = None
        record = self.server.state.comps.get(comp.comp_id)
        active = (set(record.running) | {uid for _, uid in record.queued}) if record is not None else set()
        kept = comp.kept
        if kept is not None:
            kept.forget_except(wanted)
        have = kept.uids() & wanted if kept is not None else set()
        dropped = kept.dropped if kept is not None else {}
        unknown = wanted - have - active
        reasons = sorted({dropped[uid] for uid in unknown if uid in dropped})
        log.info("computation %s taken over by recover_jobs from %s: %d results kept, %d jobs running, %d unknown",
                 comp.name, _fmt(channel.peer), len(have), len(active & wanted), len(unknown))
        channel.send_nowait(m.JobsRecovered(msg.req_id, comp.comp_id, True, kept=sorted(have),
                                            running=sorted(active & wanted), unknown=sorted(unknown),
                                            error="; ".join(reasons)))
        if kept is not None:
            for uid in sorted(have):
                result = kept.load(uid)
                if result is not None:
                    channel.send_nowait(result)

    async def expire_loop(self, stopped: asyncio.Event) -> None:
        """Close detached computations nobody recovered within ``keep_minutes``."""
        limit = self.keep_minutes * 60.0
        period = max(0.05, min(limit / 4.0, 30.0))
        while not stopped.is_set():
            await asyncio.sleep(period)
            now = time.time()
            for comp in list(self.server.computations.values()):
                if comp.detached_at is not None and now - comp.detached_at >= limit and not comp.closing:
                    log.warning("computation %s: not recovered within %g min of its client going away; closing "
                                "it with its %d kept results", comp.name, self.keep_minutes,
                                len(comp.kept) if comp.kept is not None else 0)
                    self.server._spawn(self.server.comps.close_computation(comp, terminate=True))

