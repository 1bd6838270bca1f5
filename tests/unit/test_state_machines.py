"""ClusterState and NodeState driven by random event sequences (hypothesis ``RuleBasedStateMachine``).

Each machine plays the world around one state machine: the program and the nodes for ``ClusterState``,
the clients and the executor for ``NodeState``. The world is faithful (a node reports only jobs it was
sent) but also sends stale and unknown messages. Every instruction is checked as it comes out, and the
invariants after every step: no job at two nodes, a node never sent more than its capacity, one final
status per job and nothing after it, CPUs never overcommitted by a start.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dispy_core.interfaces import JobView, NodeLoad
from dispy_core.state import events as ev
from dispy_core.state.cluster import ClusterState
from dispy_core.state.job import TRANSITIONS
from dispy_core.state.node import NodeState
from dispy_core.status import FINAL_JOB_STATES, JobStatus, NodeStatus, RefusalReason
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler

SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

NODES = ["a", "b", "c"]
UNKNOWN = "zz"
"""A node id never ready: jobs pinned to it park until discovery is done."""

_ANNOUNCED = {(prev, target) for (prev, _event), target in TRANSITIONS.items()}
"""(previous, status) pairs a NotifyJob may carry: some event of the job table moves one to the other."""


class FuzzScheduler:
    """A scheduler plugin that misbehaves: overfills nodes, names jobs and nodes that do not exist or are
    not pending (pinned, parked, in flight), repeats pairs. The state must ignore what it cannot do."""

    name = "fuzz"

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.known: set[str] = set()

    def node_added(self, node: NodeLoad) -> None:
        self.known.add(node.node_id)

    def node_removed(self, node_id: str) -> None:
        self.known.discard(node_id)

    def job_done(self, node_id: str, run_time: float) -> None:
        pass

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        rnd, ids = self.rnd, sorted(self.known | {UNKNOWN, *NODES})
        pairs = []
        for job in pending:
            roll = rnd.random()
            if roll < 0.6 and nodes:
                pairs.append((job.uid, rnd.choice(nodes).node_id))  # ignores free slots
            elif roll < 0.8:
                pairs.append((job.uid, rnd.choice(ids)))
            else:
                pairs.append((rnd.randint(0, 40), rnd.choice(ids)))  # any job: pinned, in flight, gone
        if pairs and rnd.random() < 0.3:
            pairs += rnd.sample(pairs, k=rnd.randint(1, len(pairs)))
        rnd.shuffle(pairs)
        return pairs


# =========================================================================== ClusterState
class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState(LoadBalanceScheduler())
        self.rnd = random.Random(0)
        self.clock = 0.0
        self.next_uid = 1
        self.submitted: set[int] = set()
        self.announced: dict[int, JobStatus] = {}
        """The last status a NotifyJob told the program, per job."""
        self.final: dict[int, JobStatus] = {}
        self.sent: dict[str, set[int]] = {}
        """Per node, the jobs the node was sent and has not answered for (the node side's view)."""
        self.cancel_sent: set[int] = set()
        self.deallocated: set[str] = set()
        self.closing: set[str] = set()
        """Nodes closing or closed: no job may be sent there until the node is ready again."""

    # ------------------------------------------------------------------ setup
    @initialize(scheduler=st.sampled_from(["loadbalance", "fuzz"]), reentrant=st.booleans(),
                recover=st.sampled_from([None, "resubmit", "abandon", "undecided", "random"]),
                pipeline=st.integers(1, 3), deeper=st.integers(0, 6), rnd=st.randoms(use_true_random=False),
                nodes=st.dictionaries(st.sampled_from(NODES), st.integers(1, 3), max_size=3), jobs=st.integers(0, 8))
    def setup(self, scheduler: str, reentrant: bool, recover: str | None, pipeline: int, deeper: int,
              rnd: random.Random, nodes: dict[str, int], jobs: int) -> None:
        self.rnd = rnd
        plugin = LoadBalanceScheduler() if scheduler == "loadbalance" else FuzzScheduler(rnd)

        def policy(job: JobView, failure: str) -> str | None:
            # only a job that ran at the lost node is a decision (waiting, pinned, cancelled ones are not)
            assert failure == "node-lost" and job.status == JobStatus.Running and job.pinned is None, job
            assert job.node_id in NODES, job  # the node it ran at
            return rnd.choice(["resubmit", "abandon", None]) if recover == "random" else \
                None if recover == "undecided" else recover

        self.state = ClusterState(plugin, recover=policy if recover else None, reentrant=reentrant,
                                  pipeline=pipeline, deep_pipeline=pipeline + deeper)
        # a running start (random rules alone seldom get nodes and jobs together)
        for node_id, cpus in nodes.items():
            self.node_ready(node_id, cpus)
        for _ in range(jobs):
            self.submit_one(None)

    # ------------------------------------------------------------------ driving
    def time(self) -> float:
        self.clock += 1.0
        return self.clock

    def apply(self, event: Any) -> list[Any]:
        """Hand ``event`` to the state, checking each instruction as a driver would carry it out."""
        uid, node_id = getattr(event, "uid", None), getattr(event, "node_id", None)
        answers = isinstance(event, ev.ResultArrived | ev.Refused | ev.SendFailed)
        answered = answers and uid in self.sent.get(node_id, ())
        if answered:  # the node gave the job back: no longer at the node
            self.sent[node_id].discard(uid)
        if isinstance(event, ev.NodeLost | ev.NodeReleased):
            self.sent.pop(event.node_id, None)
            self.deallocated.discard(event.node_id)
            self.closing.discard(event.node_id)
        out = self.state.handle(event)
        sends = Counter(i.node_id for i in out if isinstance(i, ev.SendJobs))
        assert all(count == 1 for count in sends.values()), f"one SendJobs per node: {out}"
        for instruction in out:
            self.check(instruction, out)
        if answered and uid in self.cancel_sent:  # a cancel, then the node answering, ends the job
            assert uid in self.final, (event, out)
        return out

    def check(self, instruction: Any, out: list[Any]) -> None:
        if isinstance(instruction, ev.NotifyJob):
            self.check_notify(instruction)
        elif isinstance(instruction, ev.SendJobs):
            self.check_send(instruction, out)
        elif isinstance(instruction, ev.SendCancel):
            assert instruction.uid in self.sent.get(instruction.node_id, ()), instruction
            self.cancel_sent.add(instruction.uid)
        elif isinstance(instruction, ev.CloseNode):
            assert instruction.node_id in self.state.nodes and instruction.node_id in self.closing, instruction
            assert not self.sent.get(instruction.node_id), f"{instruction} while jobs are there: {out}"
        else:
            assert isinstance(instruction, ev.NotifyNode), instruction

    def check_notify(self, notify: ev.NotifyJob) -> None:
        uid = notify.uid
        assert uid in self.submitted and uid not in self.final, f"{notify} after {self.final.get(uid)}"
        last = self.announced.get(uid)
        if last is None:
            assert (notify.status, notify.previous) == (JobStatus.Created, None), notify
        else:
            assert (notify.previous, notify.status) in _ANNOUNCED, notify
            # silent moves between notifies: a refusal (back to Created), resuming after a provisional result
            silent = {last} | ({JobStatus.Created} if last in (JobStatus.Running, JobStatus.ProvisionalResult)
                               else set()) | ({JobStatus.Running} if last == JobStatus.ProvisionalResult else set())
            assert notify.previous in silent, f"{notify} after {last}"
        self.announced[uid] = notify.status
        if notify.status in FINAL_JOB_STATES:
            self.final[uid] = notify.status
            self.cancel_sent.discard(uid)
            for uids in self.sent.values():
                uids.discard(uid)

    def check_send(self, send: ev.SendJobs, out: list[Any]) -> None:
        node = self.state.nodes.get(send.node_id)
        assert node is not None and send.node_id not in self.deallocated | self.closing, send
        assert send.uids and len(set(send.uids)) == len(send.uids), send
        at_node = self.sent.setdefault(send.node_id, set())
        for i, uid in enumerate(send.uids):
            assert uid in self.state.jobs and uid not in self.final, send
            assert all(uid not in uids for uids in self.sent.values()), f"{uid} is at a node already: {send}"
            record = self.state.jobs[uid]
            assert record.pinned in (None, send.node_id), send
            # beyond the node's CPUs a job waits there: Created, the program not told it runs
            assert record.waiting == (len(at_node) + i >= node.cpus), (record, send, node)
            told_running = ev.NotifyJob(uid, JobStatus.Running, JobStatus.Created) in out
            assert told_running == (not record.waiting), (record, out)
        assert len(at_node) + len(send.uids) <= node.capacity, \
            f"{send} overfills {send.node_id}: {len(at_node)} there, capacity {node.capacity}"
        at_node.update(send.uids)

    def at_nodes(self) -> list[tuple[int, str]]:
        return sorted((uid, node_id) for node_id, uids in self.sent.items() for uid in uids)

    # ------------------------------------------------------------------ the program
    def pick_node(self, data: st.DataObject) -> str:
        """A node the state knows, mostly; sometimes one it does not."""
        return data.draw(st.sampled_from([*sorted(self.state.nodes), UNKNOWN]))

    @rule(where=st.sampled_from([None, None, None, *NODES, UNKNOWN]), count=st.integers(1, 3))
    def submit(self, where: str | None, count: int) -> None:
        for _ in range(count):
            self.submit_one(where)

    def submit_one(self, where: str | None) -> None:
        uid, self.next_uid = self.next_uid, self.next_uid + 1
        self.submitted.add(uid)
        out = self.apply(ev.JobSubmitted(uid, self.time(), where))
        assert out[0] == ev.NotifyJob(uid, JobStatus.Created, None)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        known = sorted(self.state.jobs)
        uid = data.draw(st.sampled_from(known) if known and data.draw(st.booleans())
                        else st.integers(0, self.next_uid))
        at_node = self.state.jobs[uid].node_id if uid in self.state.jobs else None
        out = self.apply(ev.CancelAsked(uid, self.time()))
        if at_node is not None:
            assert out == [ev.SendCancel(at_node, uid)]
        elif uid in known:
            assert self.final[uid] == JobStatus.Cancelled
        else:
            assert out == []

    @precondition(lambda self: not self.state.discovered)
    @rule()
    def discovery_done(self) -> None:
        self.apply(ev.DiscoveryDone())
        assert not self.state.parked

    @precondition(lambda self: not self.state.closing)  # teardown closes it (again) with terminate
    @rule(terminate=st.booleans())
    def cluster_closing(self, terminate: bool) -> None:
        self.closing.update(self.state.nodes)
        self.apply(ev.ClusterClosing(terminate, self.time()))
        if terminate:
            assert not self.state.jobs

    def teardown(self) -> None:
        self.end_all()

    def end_all(self) -> None:
        """close(terminate=True), then every node goes: every job submitted has ended, exactly once."""
        self.cluster_closing(True)
        for node_id in list(self.state.nodes):
            self.apply(ev.NodeLost(node_id, "gone", self.time()))
        assert not self.state.jobs and not self.state.nodes
        assert set(self.final) == self.submitted, self.submitted - set(self.final)

    # ------------------------------------------------------------------ nodes (as the cluster sees them)
    @rule(node_id=st.sampled_from(NODES), cpus=st.integers(0, 4))
    def node_ready(self, node_id: str, cpus: int) -> None:
        self.closing.discard(node_id)  # ready again (set up again): it takes jobs, unless deallocated
        out = self.apply(ev.NodeReady(node_id, cpus, self.time()))
        assert out[0] == ev.NotifyNode(node_id, NodeStatus.Initialized)

    @precondition(lambda self: self.state.nodes)
    @rule(data=st.data(), notify=st.booleans(), lost=st.booleans())
    def node_gone(self, data: st.DataObject, notify: bool, lost: bool) -> None:
        node_id = self.pick_node(data)
        known = node_id in self.state.nodes
        cancelling = {uid for uid in self.sent.get(node_id, ()) if uid in self.cancel_sent}
        event = ev.NodeLost(node_id, "reset", self.time()) if lost else \
            ev.NodeReleased(node_id, "closed", self.time(), notify)
        out = self.apply(event)
        closed = [i for i in out if isinstance(i, ev.NotifyNode)]
        assert closed == ([ev.NotifyNode(node_id, NodeStatus.Closed)] if known and (lost or notify) else []), out
        assert known or out == []
        assert cancelling <= set(self.final), "a job being cancelled ends when its node goes"

    @precondition(lambda self: self.state.nodes)
    @rule(data=st.data(), terminate=st.booleans())
    def node_closing(self, data: st.DataObject, terminate: bool) -> None:
        node_id = self.pick_node(data)
        if node_id in self.state.nodes:
            self.closing.add(node_id)
        self.apply(ev.NodeClosing(node_id, terminate, self.time()))
        if terminate and node_id in self.state.nodes:
            assert not self.sent.get(node_id)

    @precondition(lambda self: self.state.nodes)
    @rule(data=st.data(), cpus=st.integers(0, 5))
    def node_cpus(self, data: st.DataObject, cpus: int) -> None:
        node_id = self.pick_node(data)
        self.apply(ev.NodeCpus(node_id, cpus))
        node = self.state.nodes.get(node_id)
        if node is not None:
            assert node.cpus == max(1, min(cpus, node.granted))
            assert node.pipeline <= node.depth <= node.deep
            full = node.cpus * node.depth if node.cpus == node.granted else node.cpus
            assert node.capacity == (full if node.limit is None else min(full, node.limit))

    @precondition(lambda self: self.state.nodes)
    @rule(data=st.data(), allocated=st.booleans())
    def allocation(self, data: st.DataObject, allocated: bool) -> None:
        node_id = self.pick_node(data)
        if node_id in self.state.nodes:
            (self.deallocated.discard if allocated else self.deallocated.add)(node_id)
        self.apply(ev.NodeAllocation(node_id, allocated))

    @rule()
    def tick(self) -> None:
        """Time passes: a node bounded by a refusal is offered one job more."""
        limits = {node_id: node.limit for node_id, node in self.state.nodes.items()}
        out = self.apply(ev.Tick(self.time()))
        for node_id, node in self.state.nodes.items():
            before = limits[node_id]
            assert node.limit is None if before is None else node.limit in (before + 1, None), node
        assert out == [] or any(limit is not None for limit in limits.values()), out

    # ------------------------------------------------------------------ what nodes say of the jobs they were sent
    @precondition(lambda self: any(self.sent.values()))
    @rule(data=st.data())
    def nodes_answer(self, data: st.DataObject) -> None:
        """A few messages from nodes, each about a job that node was sent and has not answered for."""
        answers = {"started": self.started, "result": self.result, "provisional": self.provisional,
                   "refused": self.refused, "send_failed": self.send_failed}
        for _ in range(data.draw(st.integers(1, 4))):
            if not any(self.sent.values()):
                return
            kind = data.draw(st.sampled_from(["started", "started", "result", "result", "result", "provisional",
                                              "refused", "send_failed"]))
            uid, node_id = data.draw(st.sampled_from(self.at_nodes()))
            answers[kind](uid, node_id, data)

    def started(self, uid: int, node_id: str, data: st.DataObject) -> None:
        waiting = self.state.jobs[uid].waiting
        out = self.apply(ev.JobStarted(uid, node_id, self.time()))
        assert out == ([ev.NotifyJob(uid, JobStatus.Running, JobStatus.Created)] if waiting else []), out
        assert not self.state.jobs[uid].waiting and self.state.jobs[uid].status == JobStatus.Running

    def result(self, uid: int, node_id: str, data: st.DataObject) -> None:
        status = data.draw(st.sampled_from([*sorted(FINAL_JOB_STATES), JobStatus.Running, 99]))
        out = self.apply(ev.ResultArrived(uid, node_id, status, data.draw(st.floats(-1, 5)), self.time(), uid))
        final = out[0]
        assert isinstance(final, ev.NotifyJob) and final.uid == uid and final.outcome == uid, out
        assert final.status == (status if status in FINAL_JOB_STATES else JobStatus.Terminated), out

    def provisional(self, uid: int, node_id: str, data: st.DataObject) -> None:
        running = self.state.jobs[uid].status == JobStatus.Running
        out = self.apply(ev.ProvisionalArrived(uid, node_id, "p"))
        assert out == ([ev.NotifyJob(uid, JobStatus.ProvisionalResult, JobStatus.Running, None, "p")]
                       if running else [])
        assert self.state.jobs[uid].status == (JobStatus.Running if running else JobStatus.Created)

    def refused(self, uid: int, node_id: str, data: st.DataObject) -> None:
        reason = data.draw(st.sampled_from(list(RefusalReason)))
        node = self.state.nodes[node_id]
        cpus, limit = node.cpus, node.limit
        cancelling = uid in self.cancel_sent
        out = self.apply(ev.Refused(uid, node_id, reason, self.time()))
        assert node.cpus == cpus
        # any refusal: no more jobs than the node holds now (no ping-pong)
        assert node.limit == node.busy == len(self.sent[node_id]), node
        assert not any(isinstance(i, ev.SendJobs) and i.node_id == node_id for i in out), out
        del limit
        assert (uid in self.final) == cancelling  # otherwise queued again, or sent again

    def send_failed(self, uid: int, node_id: str, data: st.DataObject) -> None:
        self.apply(ev.SendFailed(uid, node_id, "reset", self.time()))
        assert self.final[uid] == JobStatus.Cancelled

    @rule(data=st.data(), kind=st.sampled_from(["started", "result", "provisional", "refused", "send_failed"]))
    def stale(self, data: st.DataObject, kind: str) -> None:
        """A message about a job the node no longer has for us (or never had): changes nothing."""
        uid = data.draw(st.integers(0, self.next_uid + 2))
        node_id = data.draw(st.sampled_from([*NODES, UNKNOWN]))
        if uid in self.sent.get(node_id, ()):
            return
        t = self.time()
        event = {"started": ev.JobStarted(uid, node_id, t),
                 "result": ev.ResultArrived(uid, node_id, JobStatus.Finished, 1.0, t),
                 "provisional": ev.ProvisionalArrived(uid, node_id),
                 "refused": ev.Refused(uid, node_id, data.draw(st.sampled_from(list(RefusalReason))), t),
                 "send_failed": ev.SendFailed(uid, node_id, "late", t)}[kind]
        assert self.apply(event) == []

    # ------------------------------------------------------------------ invariants
    @invariant()
    def each_job_in_exactly_one_place(self) -> None:
        state = self.state
        places: Counter[int] = Counter(state.pending)
        places.update(state.parked)
        for node_id, node in state.nodes.items():
            places.update(node.pinned)
            places.update(list(node.in_flight))
            for uid, record in node.in_flight.items():
                assert record is state.jobs[uid] and record.node_id == node_id
                assert record.status == (JobStatus.Created if record.waiting else JobStatus.Running), record
            for uid in node.pinned:
                assert state.jobs[uid].pinned == node_id and state.jobs[uid].node_id is None
        for uid in state.pending:
            assert state.jobs[uid].pinned is None and state.jobs[uid].node_id is None
        for uid in state.parked:
            assert state.jobs[uid].pinned not in state.nodes and not state.discovered
        assert places == Counter(list(state.jobs)), (places, sorted(state.jobs))
        for record in state.jobs.values():
            assert record.node_id is not None or record.status == JobStatus.Created, record

    @invariant()
    def final_jobs_are_gone_and_others_are_kept(self) -> None:
        assert set(self.state.jobs) == self.submitted - set(self.final)

    @invariant()
    def the_node_side_agrees(self) -> None:
        for node_id, node in self.state.nodes.items():
            assert node.busy == len(node.in_flight)
            assert set(node.in_flight) == self.sent.get(node_id, set()), node_id
        assert not {node_id for node_id, uids in self.sent.items() if uids} - set(self.state.nodes)


# =========================================================================== NodeState
COMPS = ["A", "B", "C"]


class NodeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = NodeState(2)
        self.clock = 0.0
        self.next_uid = 1
        self.jobs: dict[tuple[str, int], str] = {}
        """(comp_id, uid) -> where the model says the job is: queued, running, refused, cancelled, ended,
        dropped (running when its computation closed)."""
        self.queued: dict[str, list[int]] = {}
        self.kills: set[tuple[str, int]] = set()

    @initialize(cpus=st.integers(1, 4), delay=st.sampled_from([0.0, 1.0, 2.5]),
                comps=st.dictionaries(st.sampled_from(COMPS), st.integers(0, 4), max_size=3))
    def setup(self, cpus: int, delay: float, comps: dict[str, int]) -> None:
        self.state = NodeState(cpus, delay)
        for comp_id, comp_cpus in comps.items():  # a running start: computations ready for jobs
            self.open(comp_id, comp_cpus, True)

    def time(self) -> float:
        self.clock += 1.0
        return self.clock

    def running(self, comp_id: str | None = None) -> int:
        return sum(1 for (cid, _), where in self.jobs.items()
                   if where == "running" and (comp_id is None or cid == comp_id))

    def apply(self, event: Any) -> list[Any]:
        time = getattr(event, "time", None)
        out = self.state.handle(event)
        for instruction in out:
            key = (instruction.comp_id, instruction.uid)
            where = self.jobs.get(key)
            if isinstance(instruction, ev.StartJob):
                self.check_start(instruction, event, where, time)
            elif isinstance(instruction, ev.RefuseJob):
                self.check_refuse(instruction, event, where)
            elif isinstance(instruction, ev.ReportCancelled):
                assert isinstance(event, ev.JobCancelAsked) and where == "queued", instruction
                assert instruction.time == time
                self.unqueue(key, "cancelled")
            elif isinstance(instruction, ev.SendResult):
                assert isinstance(event, ev.JobEnded) and where == "running", (instruction, where)
                self.jobs[key] = "ended"
            else:
                assert isinstance(instruction, ev.KillJob) and where == "running", (instruction, where)
                assert instruction.grace == (0.0 if isinstance(event, ev.TerminateRunning) else None)
                self.kills.add(key)
        return out

    def check_start(self, start: ev.StartJob, event: Any, where: str | None, time: float | None) -> None:
        key = (start.comp_id, start.uid)
        arriving = isinstance(event, ev.JobArrived) and (event.comp_id, event.uid) == key
        assert start.announce == (not arriving) and start.time == time, (start, event)
        assert where == ("arriving" if arriving else "queued"), (start, where)
        if not arriving:
            assert self.queued[start.comp_id][0] == start.uid, "a computation's jobs start in their order"
            self.queued[start.comp_id].pop(0)
        comp = self.state.comps[start.comp_id]
        assert self.running() < self.state.cap, f"{start}: {self.running()} running on {self.state.cap} CPUs"
        assert self.running(start.comp_id) < comp.cpus, f"{start}: computation at its {comp.cpus} CPUs"
        self.jobs[key] = "running"

    def check_refuse(self, refuse: ev.RefuseJob, event: Any, where: str | None) -> None:
        key = (refuse.comp_id, refuse.uid)
        comp = self.state.comps.get(refuse.comp_id)
        if where == "arriving":
            assert isinstance(event, ev.JobArrived)
            if comp is not None and comp.closing:
                assert refuse.reason == RefusalReason.CLOSING, refuse
            elif comp is None or not comp.ready:
                assert refuse.reason == RefusalReason.NOT_READY, refuse
            elif self.state.cap == 0:
                assert (refuse.reason, refuse.delay) == (RefusalReason.NOT_ACCEPTING, self.state.refusal_delay)
            else:
                assert refuse.reason == RefusalReason.NO_FREE_CPU and refuse.delay == 0.0, refuse
                assert len(self.queued[refuse.comp_id]) == comp.cpus, "refused while its line had room"
            self.jobs[key] = "refused"
            return
        assert where == "queued" and refuse.delay == 0.0, (refuse, where)
        expected = RefusalReason.NOT_ACCEPTING if isinstance(event, ev.NodeCapacity) else RefusalReason.CLOSING
        assert isinstance(event, ev.NodeCapacity | ev.CompClosing | ev.CompClosed) and refuse.reason == expected
        self.unqueue(key, "refused")

    def unqueue(self, key: tuple[str, int], where: str) -> None:
        self.queued[key[0]].remove(key[1])
        self.jobs[key] = where

    def in_place(self, where: str) -> list[tuple[str, int]]:
        return sorted(key for key, w in self.jobs.items() if w == where)

    # ------------------------------------------------------------------ computations
    def comps(self, ready: bool | None = None) -> list[str]:
        return [comp_id for comp_id, comp in sorted(self.state.comps.items())
                if ready is None or ready == (comp.ready and not comp.closing)]

    # the node refuses to open a computation already open (node/server.py), before the state
    @precondition(lambda self: len(self.state.comps) < len(COMPS))
    @rule(data=st.data(), cpus=st.integers(-1, 5), ready=st.sampled_from([True, True, False]))
    def comp_opened(self, data: st.DataObject, cpus: int, ready: bool) -> None:
        self.open(data.draw(st.sampled_from([c for c in COMPS if c not in self.state.comps])), cpus, ready)

    def open(self, comp_id: str, cpus: int, ready: bool) -> None:
        assert self.apply(ev.CompOpened(comp_id, cpus)) == []
        if ready:
            assert self.apply(ev.CompReady(comp_id)) == []
        assert 1 <= self.state.comps[comp_id].cpus <= max(1, self.state.cpus)
        self.queued[comp_id] = []

    @precondition(lambda self: any(not comp.ready for comp in self.state.comps.values()))
    @rule(data=st.data())
    def comp_ready(self, data: st.DataObject) -> None:
        comp_id = data.draw(st.sampled_from([c for c, comp in sorted(self.state.comps.items()) if not comp.ready]))
        assert self.apply(ev.CompReady(comp_id)) == []

    @precondition(lambda self: self.state.comps)
    @rule(data=st.data())
    def comp_closing(self, data: st.DataObject) -> None:
        comp_id = data.draw(st.sampled_from([*self.comps(), "unknown"]))
        self.apply(ev.CompClosing(comp_id))
        assert comp_id not in self.state.comps or not self.queued[comp_id]

    @precondition(lambda self: self.state.comps)
    @rule(data=st.data())
    def comp_closed(self, data: st.DataObject) -> None:
        comp_id = data.draw(st.sampled_from([*self.comps(), "unknown"]))
        for key, where in self.jobs.items():  # jobs it never reported free their CPUs (before others start)
            if key[0] == comp_id and where == "running" and comp_id in self.state.comps:
                self.jobs[key] = "dropped"
        known = comp_id in self.state.comps
        self.apply(ev.CompClosed(comp_id, self.time()))
        if known:
            assert not self.queued.pop(comp_id)

    # ------------------------------------------------------------------ jobs
    @rule(data=st.data(), count=st.integers(1, 3))
    def arrive(self, data: st.DataObject, count: int) -> None:
        """Jobs for a computation ready for them, mostly; else one unknown, not set up yet, or closing."""
        comp_id = data.draw(st.sampled_from([*self.comps(ready=True) * 4, *self.comps(ready=False), "unknown"]))
        for _ in range(count):
            self.arrive_at(comp_id, data)

    def arrive_at(self, comp_id: str, data: st.DataObject) -> None:
        again = [key for key in self.in_place("refused") if key[0] == comp_id]
        if again and data.draw(st.booleans()):  # the client sends a refused job again
            uid = data.draw(st.sampled_from(again))[1]
        else:
            uid, self.next_uid = self.next_uid, self.next_uid + 1
        key = (comp_id, uid)
        self.jobs[key] = "arriving"
        out = self.apply(ev.JobArrived(comp_id, uid, self.time()))
        assert len(out) <= 1, out
        if not out:
            assert [u for _, u in self.state.comps[comp_id].queued][-1:] == [uid]
            self.jobs[key] = "queued"
            self.queued[comp_id].append(uid)

    @precondition(lambda self: "running" in self.jobs.values())
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        """The executor reports a few running jobs done."""
        for _ in range(data.draw(st.integers(1, 3))):
            if "running" not in self.jobs.values():
                return
            comp_id, uid = data.draw(st.sampled_from(self.in_place("running")))
            out = self.apply(ev.JobEnded(comp_id, uid, self.time()))
            assert out[0] == ev.SendResult(comp_id, uid)

    @rule(data=st.data())
    def stale_end(self, data: st.DataObject) -> None:
        comp_id = data.draw(st.sampled_from([*COMPS, "unknown"]))
        uid = data.draw(st.integers(0, self.next_uid + 1))
        if self.jobs.get((comp_id, uid)) != "running":
            assert self.apply(ev.JobEnded(comp_id, uid, self.time())) == []

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        there = self.in_place("queued") + self.in_place("running")
        if there and data.draw(st.booleans()):
            comp_id, uid = data.draw(st.sampled_from(there))
        else:
            comp_id = data.draw(st.sampled_from([*COMPS, "unknown"]))
            uid = data.draw(st.integers(0, self.next_uid + 1))
        where = self.jobs.get((comp_id, uid))
        out = self.apply(ev.JobCancelAsked(comp_id, uid, self.time()))
        assert len(out) == (1 if where in ("running", "queued") else 0), (where, out)

    # ------------------------------------------------------------------ the node
    @rule(cpus=st.integers(0, 4), closed=st.sampled_from(["", "", "stopped"]))
    def capacity(self, cpus: int, closed: str) -> None:
        out = self.apply(ev.NodeCapacity(cpus, closed, self.time()))
        if self.state.cap == 0:  # closed: waiting jobs go back to their clients
            assert all(isinstance(i, ev.RefuseJob) for i in out) and not any(self.queued.values())
        else:  # open: waiting jobs may start on CPUs added
            assert all(isinstance(i, ev.StartJob) for i in out), out

    @precondition(lambda self: "running" in self.jobs.values())
    @rule()
    def terminate(self) -> None:
        out = self.apply(ev.TerminateRunning("window ended"))
        assert sorted((i.comp_id, i.uid) for i in out) == self.in_place("running")

    # ------------------------------------------------------------------ invariants
    @invariant()
    def running_and_waiting_as_the_model_says(self) -> None:
        state = self.state
        assert state.busy == self.running() == sum(len(comp.running) for comp in state.comps.values())
        assert set(state.comps) == set(self.queued)
        for comp_id, comp in state.comps.items():
            assert [uid for _, uid in comp.queued] == self.queued[comp_id]
            assert len(comp.queued) <= comp.cpus
            assert comp.running == {uid for (cid, uid) in self.in_place("running") if cid == comp_id}
            assert not (comp.closing and comp.queued)
        assert "arriving" not in self.jobs.values()

    @invariant()
    def no_cpu_idles_while_a_job_that_may_use_it_waits(self) -> None:
        state = self.state
        for comp in state.comps.values():
            if comp.queued:
                assert state.busy >= state.cap or len(comp.running) >= comp.cpus, comp


TestClusterState = ClusterMachine.TestCase
TestClusterState.settings = SETTINGS
TestNodeState = NodeMachine.TestCase
TestNodeState.settings = SETTINGS
