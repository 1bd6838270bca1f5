"""A computation whose client went away: kept running for ``recover_jobs``, handed over, or expired.

A client that keeps a recover file asks for this (``options["recover"]``). When its connection ends
without the computation being closed, the computation is *detached*: its jobs run on, their results go
to disk (``node/kept.py``). ``recover_jobs`` then takes it over on a new connection (``JobsRecover``)
and gets every kept result, then the others as their jobs end. A detached computation nobody takes
over is closed after the zombie interval. A client that does not keep a recover file gets the old
behaviour: its jobs are terminated when its connection ends.

Results kept on disk outlive the node process: a node stopped or restarted meanwhile finds them at start
(*orphans*: no computation any more, only results), serves them to ``recover_jobs`` and removes them
when recovered or older than the keeping time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import TYPE_CHECKING

from dispy_core.channel import Channel, _fmt
from dispy_core.node.kept import KEPT_DIR, KeptResults
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
        self.orphans: dict[str, KeptResults] = {}
        """Results of computations from before this node process started, by computation id."""
        self.orphan_owner: dict[str, Channel] = {}

    def find_orphans(self) -> None:
        """At start: results an earlier run kept for vanished clients; expired ones are removed."""
        root = self.server.dest_path_prefix / KEPT_DIR
        if not root.is_dir():
            return
        limit = time.time() - self.keep_minutes * 60.0
        for directory in root.iterdir():
            try:
                expired = directory.stat().st_mtime < limit
            except OSError:
                continue
            if directory.is_symlink() or not directory.is_dir():
                directory.unlink(missing_ok=True)  # not ours: only folders are made here
                continue
            if expired:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            kept = KeptResults.found_on_disk(directory, self.server.kept_budget)
            if kept.on_disk:
                self.orphans[directory.name] = kept
                log.info("kept results of %d jobs of computation %s, from before this node started, wait for "
                         "recover_jobs", len(kept.on_disk), directory.name)
            else:
                kept.clear()

    def connection_ended(self, channel: Channel) -> None:
        """The client's connection ended: detach what it may recover, terminate the rest."""
        for comp_id in [c for c, owner in self.orphan_owner.items() if owner is channel]:
            del self.orphan_owner[comp_id]  # recover_jobs went away before it was done: they stay
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
        elif comp is None:
            self.acknowledge_orphan(channel, msg)

    def take_over(self, channel: Channel, msg: m.JobsRecover) -> None:
        """``recover_jobs`` on ``channel``: the computation is its own from now on."""
        comp = self.server.computations.get(msg.comp_id)
        wanted = set(msg.job_uids)
        if comp is None and msg.comp_id in self.orphans:
            self._hand_over_orphan(channel, msg, wanted)
            return
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

    def _hand_over_orphan(self, channel: Channel, msg: m.JobsRecover, wanted: set[int]) -> None:
        kept = self.orphans[msg.comp_id]
        self.orphan_owner[msg.comp_id] = channel
        kept.forget_except(wanted)
        have = kept.uids() & wanted
        unknown = wanted - have
        log.info("results of computation %s, kept from before this node started, taken by recover_jobs from %s: "
                 "%d results, %d unknown", msg.comp_id, _fmt(channel.peer), len(have), len(unknown))
        channel.send_nowait(m.JobsRecovered(
            msg.req_id, msg.comp_id, True, kept=sorted(have), unknown=sorted(unknown),
            error="the node was restarted: jobs that had not finished before were lost with it" if unknown else ""))
        for uid in sorted(have):
            result = kept.load(uid)
            if result is not None:
                channel.send_nowait(result)

    def close_orphan(self, channel: Channel, msg: m.ComputationClose) -> bool:
        """``recover_jobs`` is done with an orphan: its results go. False if ``msg`` is not about one."""
        if self.orphan_owner.get(msg.comp_id) is not channel:
            return False
        del self.orphan_owner[msg.comp_id]
        self.orphans.pop(msg.comp_id).clear()
        channel.send_nowait(m.ComputationClosed(msg.req_id, msg.comp_id))
        return True

    def acknowledge_orphan(self, channel: Channel, msg: m.ResultsAck) -> None:
        if self.orphan_owner.get(msg.comp_id) is channel:
            self.orphans[msg.comp_id].acknowledged(msg.job_uids)

    async def expire_loop(self, stopped: asyncio.Event) -> None:
        """Close detached computations nobody recovered within ``keep_minutes``."""
        limit = self.keep_minutes * 60.0
        period = max(0.05, min(limit / 4.0, 30.0))
        while not stopped.is_set():
            await asyncio.sleep(period)
            now = time.time()
            for comp_id in list(self.orphans):
                if comp_id not in self.orphan_owner and now - self.server.started_at >= limit:
                    log.warning("kept results of computation %s not recovered within %g min; removed", comp_id,
                                self.keep_minutes)
                    self.orphans.pop(comp_id).clear()
            for comp in list(self.server.computations.values()):
                if comp.detached_at is not None and now - comp.detached_at >= limit and not comp.closing:
                    log.warning("computation %s: not recovered within %g min of its client going away; closing "
                                "it with its %d kept results", comp.name, self.keep_minutes,
                                len(comp.kept) if comp.kept is not None else 0)
                    self.server._spawn(self.server.comps.close_computation(comp, terminate=True))

