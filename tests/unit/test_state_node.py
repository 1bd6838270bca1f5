"""NodeState by example: each flow as ``state.handle(event) == [instructions]``."""

from __future__ import annotations

from dispy_core.state.events import (
    CompClosed,
    CompClosing,
    CompOpened,
    CompReady,
    JobArrived,
    JobCancelAsked,
    JobEnded,
    KillJob,
    NodeCapacity,
    RefuseJob,
    ReportCancelled,
    SendResult,
    StartJob,
    TerminateRunning,
)
from dispy_core.state.node import REFUSAL_DELAY, NodeState
from dispy_core.status import RefusalReason

T, T2 = 100.0, 107.5
NO_FREE_CPU = RefusalReason.NO_FREE_CPU


def node(cpus: int = 2, *comps: tuple[str, int], ready: bool = True, **kwargs: float) -> NodeState:
    state = NodeState(cpus, **kwargs)
    for comp_id, comp_cpus in comps or (("c", 0),):
        assert state.handle(CompOpened(comp_id, comp_cpus)) == []
        if ready:
            assert state.handle(CompReady(comp_id)) == []
    return state


def arrive(state: NodeState, comp_id: str, *uids: int, time: float = T) -> list[object]:
    out: list[object] = []
    for uid in uids:
        out += state.handle(JobArrived(comp_id, uid, time))
    return out


def running(state: NodeState) -> dict[str, list[int]]:
    return {comp_id: sorted(comp.running) for comp_id, comp in state.comps.items()}


def queued(state: NodeState) -> dict[str, list[int]]:
    return {comp_id: [uid for _, uid in comp.queued] for comp_id, comp in state.comps.items()}


# =========================================================================== computations
def test_computation_cpus() -> None:
    state = node(4, ("all", 0), ("two", 2), ("many", 9), ("neg", -1))
    assert {comp_id: comp.cpus for comp_id, comp in state.comps.items()} == {"all": 4, "two": 2, "many": 4,
                                                                             "neg": 4}
    assert node(0, ("c", 3)).comps["c"].cpus == 1  # at least one


def test_unknown_computations_are_ignored() -> None:
    state = node(2)
    assert state.handle(CompReady("zz")) == []
    assert state.handle(CompClosing("zz")) == []
    assert state.handle(CompClosed("zz", T)) == []
    assert state.handle(JobEnded("zz", 1, T)) == []
    assert state.handle(JobCancelAsked("zz", 1, T)) == []


# =========================================================================== arrivals
def test_a_job_with_a_free_cpu_starts_at_once() -> None:
    state = node(2)
    assert arrive(state, "c", 1) == [StartJob("c", 1, False, T)]
    assert arrive(state, "c", 2) == [StartJob("c", 2, False, T)]
    assert state.busy == 2 and state.avail_cpus == 0


def test_a_computation_that_asks_is_told_of_every_start() -> None:
    state = NodeState(2)
    state.handle(CompOpened("sched", 0, announce_starts=True))
    state.handle(CompReady("sched"))
    assert arrive(state, "sched", 1) == [StartJob("sched", 1, True, T)]  # started on arrival: said all the same


def test_a_client_may_have_more_jobs_wait_per_cpu_when_it_asks() -> None:
    state = NodeState(1)
    state.handle(CompOpened("deep", 0, queue_per_cpu=3))
    state.handle(CompReady("deep"))
    arrive(state, "deep", 1, 2, 3, 4)  # one runs, three wait
    assert running(state) == {"deep": [1]} and queued(state) == {"deep": [2, 3, 4]}
    assert arrive(state, "deep", 5) == [RefuseJob("deep", 5, NO_FREE_CPU, "no free CPU")]


def test_beyond_the_cpus_jobs_wait_then_are_refused() -> None:
    state = node(2)
    arrive(state, "c", 1, 2)
    assert arrive(state, "c", 3, 4) == []  # wait for a CPU, up to the computation's CPUs
    assert queued(state) == {"c": [3, 4]}
    assert arrive(state, "c", 5) == [RefuseJob("c", 5, NO_FREE_CPU, "no free CPU")]
    assert state.busy == 2


def test_a_computation_uses_only_its_cpus() -> None:
    state = node(4, ("c", 1))
    assert arrive(state, "c", 1, 2, 3) == [StartJob("c", 1, False, T),
                                           RefuseJob("c", 3, NO_FREE_CPU, "no free CPU")]
    assert queued(state) == {"c": [2]} and state.avail_cpus == 3


def test_not_ready_unknown_or_closing_computations_refuse() -> None:
    state = node(2, ready=False)
    detail = "computation is not ready here"
    assert arrive(state, "c", 1) == [RefuseJob("c", 1, RefusalReason.NOT_READY, detail)]
    assert arrive(state, "zz", 2) == [RefuseJob("zz", 2, RefusalReason.NOT_READY, detail)]
    state.handle(CompReady("c"))
    state.handle(CompClosing("c"))
    assert arrive(state, "c", 3) == [RefuseJob("c", 3, RefusalReason.CLOSING, detail)]
    assert state.busy == 0


# =========================================================================== ends and fairness
def test_a_job_ending_sends_its_result_and_starts_the_next() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1), StartJob("c", 2, True, T2)]
    assert state.handle(JobEnded("c", 2, T2)) == [SendResult("c", 2)]
    assert state.jobs_done == 2 and state.comps["c"].jobs_done == 2 and state.busy == 0


def test_ended_twice_or_never_started_yields_nothing() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    state.handle(JobEnded("c", 1, T2))
    assert state.handle(JobEnded("c", 1, T2)) == []
    assert state.handle(JobEnded("c", 99, T2)) == []
    assert state.jobs_done == 1


def test_the_job_that_waited_longest_starts_first_whatever_its_computation() -> None:
    state = node(1, ("a", 1), ("b", 1))
    arrive(state, "a", 1)
    assert arrive(state, "b", 2) == []
    assert arrive(state, "a", 3) == []
    assert state.handle(JobEnded("a", 1, T2)) == [SendResult("a", 1), StartJob("b", 2, True, T2)]
    assert state.handle(JobEnded("b", 2, T2)) == [SendResult("b", 2), StartJob("a", 3, True, T2)]


def test_a_computation_at_its_cpus_is_passed_over() -> None:
    state = node(2, ("a", 1), ("b", 2))
    arrive(state, "a", 1)
    arrive(state, "b", 2)
    assert arrive(state, "a", 3) == []  # a uses its one CPU
    assert arrive(state, "b", 4) == []  # the node's CPUs are busy
    # a's job waited longer, but a may not run two: b's starts
    assert state.handle(JobEnded("b", 2, T2)) == [SendResult("b", 2), StartJob("b", 4, True, T2)]
    assert state.handle(JobEnded("a", 1, T2)) == [SendResult("a", 1), StartJob("a", 3, True, T2)]


# =========================================================================== cancels
def test_cancel_a_running_job_kills_it() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    assert state.handle(JobCancelAsked("c", 1, T2)) == [KillJob("c", 1)]
    assert running(state) == {"c": [1]}  # until the executor reports it
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1), StartJob("c", 2, True, T2)]


def test_cancel_a_waiting_job_reports_it_cancelled() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    assert state.handle(JobCancelAsked("c", 2, T2)) == [ReportCancelled("c", 2, T2)]
    assert queued(state) == {"c": []}
    assert state.handle(JobCancelAsked("c", 2, T2)) == []  # gone
    assert state.handle(JobCancelAsked("c", 99, T2)) == []
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1)]


# =========================================================================== capacity
def test_closing_the_node_refuses_waiting_and_new_jobs() -> None:
    state = node(1, refusal_delay=2.5)
    arrive(state, "c", 1, 2)
    assert state.handle(NodeCapacity(1, "stopped")) == [RefuseJob("c", 2, RefusalReason.NOT_ACCEPTING, "stopped")]
    assert state.cap == 0 and state.avail_cpus == 0
    assert arrive(state, "c", 3) == [RefuseJob("c", 3, RefusalReason.NOT_ACCEPTING, "stopped", 2.5)]
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1)]  # running jobs finish


def test_zero_cpus_is_closed_too() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    assert state.handle(NodeCapacity(0)) == [RefuseJob("c", 2, RefusalReason.NOT_ACCEPTING, "")]
    assert arrive(state, "c", 3) == [RefuseJob("c", 3, RefusalReason.NOT_ACCEPTING, "", REFUSAL_DELAY)]


def test_reopening_starts_nothing_by_itself_but_new_jobs_run() -> None:
    state = node(2)
    state.handle(NodeCapacity(2, "outside the service window"))
    assert state.handle(NodeCapacity(2)) == []
    assert arrive(state, "c", 1) == [StartJob("c", 1, False, T)]


def test_fewer_cpus_while_jobs_run_start_none_until_below() -> None:
    state = node(3)
    arrive(state, "c", 1, 2, 3)
    assert state.handle(NodeCapacity(1)) == []
    assert arrive(state, "c", 4) == []  # waits: the node serves one CPU now
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1)]
    assert state.handle(JobEnded("c", 2, T2)) == [SendResult("c", 2)]
    assert state.handle(JobEnded("c", 3, T2)) == [SendResult("c", 3), StartJob("c", 4, True, T2)]


def test_more_cpus_start_waiting_jobs() -> None:
    state = node(2, ("a", 2), ("b", 2))
    arrive(state, "a", 1, 2)
    assert arrive(state, "b", 3, 4) == []  # wait
    assert state.handle(NodeCapacity(3, time=T2)) == [StartJob("b", 3, True, T2)]
    assert state.handle(NodeCapacity(4, time=T2)) == [StartJob("b", 4, True, T2)]
    assert arrive(state, "b", 5) == []  # b uses its two CPUs


def test_terminate_kills_every_running_job_at_once() -> None:
    state = node(3, ("a", 2), ("b", 2))
    arrive(state, "a", 5, 1, 7)
    arrive(state, "b", 2)
    assert state.handle(TerminateRunning("service window ended")) == [KillJob("a", 1, 0.0), KillJob("a", 5, 0.0),
                                                                      KillJob("b", 2, 0.0)]
    assert queued(state) == {"a": [7], "b": []}


# =========================================================================== closing computations
def test_computation_closing_returns_its_waiting_jobs() -> None:
    state = node(1)
    arrive(state, "c", 1, 2)
    assert state.handle(CompClosing("c")) == [RefuseJob("c", 2, RefusalReason.CLOSING, "computation closing")]
    assert state.handle(CompClosing("c")) == []
    assert state.handle(JobEnded("c", 1, T2)) == [SendResult("c", 1)]


def test_computation_closed_frees_its_cpus_for_others() -> None:
    state = node(2, ("a", 2), ("b", 2))
    arrive(state, "a", 1, 2, 3)
    arrive(state, "b", 4, 5)
    assert queued(state) == {"a": [3], "b": [4, 5]}
    # a's running jobs were never reported: closing it frees their CPUs
    assert state.handle(CompClosed("a", T2)) == [RefuseJob("a", 3, RefusalReason.CLOSING, "computation closed"),
                                                 StartJob("b", 4, True, T2), StartJob("b", 5, True, T2)]
    assert "a" not in state.comps and state.busy == 2
    assert state.handle(JobEnded("a", 1, T2)) == []
