"""NodeState: which job a node starts when, and which it refuses (and why).

Pure, like ``state.cluster``: events in (``state.events``), instructions out. The node driver
(``node/server.py``) keeps the jobs' bytes and carries out the instructions.

- **CPUs.** The node serves ``cpus`` CPUs while open; closed (stopped by its operator, outside its service
  window, quitting), it serves none. A computation uses at most the CPUs it was granted. ``busy`` is the
  number of running jobs, computed, never counted by hand.
- **Waiting line.** A job arriving when no CPU is free for it waits, up to ``cpus`` jobs per computation
  (``queue_per_cpu`` times that when its client asks: it sends more ahead when jobs are short), so a CPU
  that frees starts the next job at once instead of after a round trip to the client. Beyond that the job
  is refused (``NO_FREE_CPU``: another computation holds the CPUs).
- **Fairness.** When a CPU frees, the job that has waited longest starts, whatever its computation (the CPU
  one computation frees may be the one another computation's job waits for).
- **Refusals** carry a :class:`RefusalReason`; a node taking no jobs holds its refusals ``refusal_delay``
  seconds, so a client that re-sends at once cannot spin.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispy_core.state import events as ev
from dispy_core.status import RefusalReason

__all__ = ["REFUSAL_DELAY", "CompRecord", "NodeState"]

REFUSAL_DELAY = 1.0
"""Seconds a node that takes no jobs holds a refusal (bounds the refusals to one per job per second)."""

MAX_QUEUE_PER_CPU = 64
"""The most jobs per CPU a client may have wait here (bounds the node's memory per computation)."""

Out = list[ev.NodeInstruction]


@dataclass(slots=True)
class CompRecord:
    """One computation hosted on the node."""

    comp_id: str
    cpus: int
    ready: bool = False
    closing: bool = False
    queued: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    """(arrival number, job uid) of jobs waiting for a CPU, oldest first."""
    running: set[int] = field(default_factory=set)
    jobs_done: int = 0
    announce_starts: bool = False
    queue_per_cpu: int = 1


class NodeState:
    """CPU accounting and job admission for one node; see the module docstring for the rules."""

    def __init__(self, cpus: int, refusal_delay: float = REFUSAL_DELAY) -> None:
        self.cpus = cpus
        self.closed_reason = ""
        self.refusal_delay = refusal_delay
        self.comps: dict[str, CompRecord] = {}
        self.jobs_done = 0
        self._arrivals = itertools.count()

    def handle(self, event: ev.NodeEvent) -> Out:
        """Apply ``event``; the instructions to carry out, in order."""
        out: Out = []
        self._handlers[type(event)](self, event, out)
        return out

    @property
    def busy(self) -> int:
        return sum(len(comp.running) for comp in self.comps.values())

    @property
    def cap(self) -> int:
        """CPUs new jobs may use: all served CPUs while open, none while closed."""
        return 0 if self.closed_reason else self.cpus

    @property
    def avail_cpus(self) -> int:
        return max(0, self.cap - self.busy)

    # ------------------------------------------------------------------ computations
    def _opened(self, event: ev.CompOpened, out: Out) -> None:
        if event.comp_id in self.comps:
            return  # open already: its jobs stay accounted for
        cpus = min(self.cpus, event.cpus) if event.cpus > 0 else self.cpus
        self.comps[event.comp_id] = CompRecord(event.comp_id, max(1, cpus), announce_starts=event.announce_starts,
                                               queue_per_cpu=max(1, min(MAX_QUEUE_PER_CPU, event.queue_per_cpu)))

    def _ready(self, event: ev.CompReady, out: Out) -> None:
        comp = self.comps.get(event.comp_id)
        if comp is not None:
            comp.ready = True

    def _closing(self, event: ev.CompClosing, out: Out) -> None:
        comp = self.comps.get(event.comp_id)
        if comp is not None and not comp.closing:
            comp.closing = True
            self._refuse_queued(comp, RefusalReason.CLOSING, "computation closing", out)

    def _closed(self, event: ev.CompClosed, out: Out) -> None:
        comp = self.comps.pop(event.comp_id, None)
        if comp is not None:  # running jobs it never reported free their CPUs with it
            self._refuse_queued(comp, RefusalReason.CLOSING, "computation closed", out)
            self._start_queued(event.time, out)

    # ------------------------------------------------------------------ jobs
    def _arrived(self, event: ev.JobArrived, out: Out) -> None:
        comp = self.comps.get(event.comp_id)
        if comp is None or not comp.ready or comp.closing:
            reason = RefusalReason.CLOSING if comp is not None and comp.closing else RefusalReason.NOT_READY
            out.append(ev.RefuseJob(event.comp_id, event.uid, reason, "computation is not ready here"))
            return
        if self.busy < self.cap and len(comp.running) < comp.cpus:
            comp.running.add(event.uid)
            out.append(ev.StartJob(comp.comp_id, event.uid, comp.announce_starts, event.time))
        elif self.cap > 0 and len(comp.queued) < comp.cpus * comp.queue_per_cpu:
            comp.queued.append((next(self._arrivals), event.uid))
        elif self.cap == 0:
            out.append(ev.RefuseJob(comp.comp_id, event.uid, RefusalReason.NOT_ACCEPTING, self.closed_reason,
                                    self.refusal_delay))
        else:
            out.append(ev.RefuseJob(comp.comp_id, event.uid, RefusalReason.NO_FREE_CPU, "no free CPU"))

    def _ended(self, event: ev.JobEnded, out: Out) -> None:
        comp = self.comps.get(event.comp_id)
        if comp is None or event.uid not in comp.running:
            return  # cancelled with its computation, or reported twice
        comp.running.discard(event.uid)
        comp.jobs_done += 1
        self.jobs_done += 1
        out.append(ev.SendResult(comp.comp_id, event.uid))
        self._start_queued(event.time, out)

    def _cancel(self, event: ev.JobCancelAsked, out: Out) -> None:
        comp = self.comps.get(event.comp_id)
        if comp is None:
            return
        if event.uid in comp.running:
            out.append(ev.KillJob(comp.comp_id, event.uid))
            return
        for entry in comp.queued:
            if entry[1] == event.uid:
                comp.queued.remove(entry)
                out.append(ev.ReportCancelled(comp.comp_id, event.uid, event.time))
                return

    def _capacity(self, event: ev.NodeCapacity, out: Out) -> None:
        self.cpus = event.cpus
        self.closed_reason = event.closed_reason
        if self.cap == 0:
            for comp in self.comps.values():
                self._refuse_queued(comp, RefusalReason.NOT_ACCEPTING, self.closed_reason, out)
        else:  # more CPUs may start jobs that wait
            self._start_queued(event.time, out)

    def _terminate(self, event: ev.TerminateRunning, out: Out) -> None:
        for comp in self.comps.values():
            out.extend(ev.KillJob(comp.comp_id, uid, 0.0) for uid in sorted(comp.running))

    # ------------------------------------------------------------------ helpers
    def _start_queued(self, time: float, out: Out) -> None:
        """Start waiting jobs while CPUs are free, the oldest first across every computation."""
        while self.busy < self.cap:
            ready = [c for c in self.comps.values() if c.queued and not c.closing and len(c.running) < c.cpus]
            if not ready:
                return
            chosen = min(ready, key=lambda c: c.queued[0][0])
            _, uid = chosen.queued.popleft()
            chosen.running.add(uid)
            out.append(ev.StartJob(chosen.comp_id, uid, True, time))

    def _refuse_queued(self, comp: CompRecord, reason: RefusalReason, detail: str, out: Out) -> None:
        """Jobs accepted but not started go back to the client, refused, so it schedules them again."""
        while comp.queued:
            _, uid = comp.queued.popleft()
            out.append(ev.RefuseJob(comp.comp_id, uid, reason, detail))

    _handlers: dict[type, Callable[[NodeState, Any, Out], None]] = {
        ev.CompOpened: _opened,
        ev.CompReady: _ready,
        ev.CompClosing: _closing,
        ev.CompClosed: _closed,
        ev.JobArrived: _arrived,
        ev.JobEnded: _ended,
        ev.JobCancelAsked: _cancel,
        ev.NodeCapacity: _capacity,
        ev.TerminateRunning: _terminate,
    }
