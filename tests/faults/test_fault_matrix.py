"""The fault matrix: what real faults do to a real cluster's results.

Each scenario runs dispynode processes (one CPU each) and a client program, each in its own network
namespace on a bridge (see ``dispy_core.testing.netns``), submits at least 100 short jobs, injects one
fault from the test process at a known moment, and counts from the program's own callbacks: results LOST
(no Finished result with the right value, or an unexpected final status), DUPLICATED (a second final
``job_status`` callback for a job), the time from the fault to the client noticing it, and whether
``cluster.wait(timeout=...)`` returned True. Every scenario requires 0 lost, 0 duplicated and wait() True.
The session ends with the table (``python -m pytest tests/faults -q``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultlab import SECRET, ClientProgram, FaultNode, Outcome, expected_result, judge, results_per_node, tail

from dispy_core.status import JobStatus
from dispy_core.testing.netns import Lab, loss_tool

JOBS = 100
PAUSE = 0.03
"""Each job sleeps this long: short, so a scenario takes seconds, but long enough to be caught running."""
FAULT_AFTER = 20
"""Results to wait for before the fault, so it hits mid-run with jobs running and queued on every node."""
OUTAGE = 30.0
"""How long a node stays frozen or cut off (longer than the 5 missed pulses that make it lost)."""
Record = Callable[[Outcome], None]


def launch(lab: Lab, tmp_path: Path, nodes: int, *, reentrant: bool, pulse_interval: float | None = None,
           before_client: Callable[[list[FaultNode]], None] | None = None,
           recover_file: Path | None = None) -> tuple[list[FaultNode], ClientProgram]:
    """Start ``nodes`` dispynodes and the client program; return once the program has every node."""
    started = [FaultNode(lab.add_host(f"n{i}"), f"n{i}", tmp_path / f"n{i}", tmp_path / f"n{i}.log").spawn()
               for i in range(nodes)]
    for node in started:
        node.wait_ready()
    if before_client is not None:
        before_client(started)
    config = {"nodes": [[node.host.addr, node.port] for node in started], "secret": SECRET,
              "reentrant": reentrant, "pulse_interval": pulse_interval,
              "pause": PAUSE, "max_runtime": 200, "ready_timeout": 60,
              "recover_file": str(recover_file) if recover_file else None}
    client = ClientProgram(lab.add_host("client"), tmp_path / "client.log", config).start()
    assert client.expect("ready", 90)["ok"], f"the client program did not get every node:\n{tail(client.log_path)}"
    return started, client


def conclude(record: Record, scenario: str, started: float, asked: int, summary: dict[str, Any],
             nodes: list[FaultNode], client: ClientProgram, *, abandon_ok_on: str | None = None,
             rejoined: float | None = None, note: str = "") -> None:
    """Record the scenario's row, then require no lost and no duplicated result and wait() True."""
    verdict = judge(summary, asked, abandon_ok_on)
    per_node = results_per_node(summary, {node.host.addr: node.name for node in nodes})
    record(Outcome(scenario, asked, verdict.lost, verdict.duplicated, verdict.abandoned_expected,
                   summary.get("detect"), summary.get("detect_how"), summary.get("wait_returned"), rejoined,
                   time.monotonic() - started, per_node, note))
    logs = "\n".join(f"--- {node.name} log (last lines):\n{tail(node.log_path, 25)}" for node in nodes)
    context = (f"{scenario}: lost {verdict.lost}, duplicated {verdict.duplicated}, "
               f"wait() returned {summary.get('wait_returned')}, watchdog {summary.get('watchdog')}\n"
               + "\n".join(verdict.problems[:15])
               + f"\nnodes at the end {summary.get('nodes')}, failed {summary.get('failed_nodes')}\n"
               + f"--- client log (last lines):\n{tail(client.log_path, 25)}\n{logs}")
    assert summary.get("wait_returned") is True, context
    assert verdict.lost == 0, context
    assert verdict.duplicated == 0, context


def rejoin(client: ClientProgram, node: FaultNode, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (the node restarted, woken or reconnected) until the client uses ``node``
    again: the table's "node back" column (None: not within ``timeout``)."""
    client.send(cmd="wait_node", key=node.key, timeout=timeout)
    up = client.expect("node", timeout + 30)["up"]
    return None if up is None else up - since


# ------------------------------------------------------------------------------------------- 1. kill + restart
@pytest.mark.timeout(150)
def test_node_killed_and_restarted_on_its_port(lab: Lab, tmp_path: Path, record_outcome: Record) -> None:
    """One node, SIGKILLed mid-run and started again on the same port 3 s later: the client reconnects by
    itself and the jobs that were on the node are resubmitted there (reentrant=True)."""
    started = time.monotonic()
    [node], client = launch(lab, tmp_path, 1, reentrant=True)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("done", 60, done=FAULT_AFTER)
    at = time.monotonic()
    node.kill()
    client.fault(node, at, "SIGKILL")
    time.sleep(max(0.0, at + 3.0 - time.monotonic()))
    restarted = time.monotonic()
    node.spawn().wait_ready()
    back = rejoin(client, node, restarted, 60)
    summary = client.finish(wait_timeout=60)
    conclude(record_outcome, "1. node SIGKILL, restarted after 3 s (1 node, reentrant)", started, JOBS,
             summary, [node], client, rejoined=back)
    assert back is not None, f"the client did not use the restarted node within 60 s:\n{tail(client.log_path)}"


# ------------------------------------------------------------------------------------- 2-3. kill one of two
@pytest.mark.timeout(120)
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "not-reentrant"])
def test_one_of_two_nodes_killed(lab: Lab, tmp_path: Path, record_outcome: Record, reentrant: bool) -> None:
    """Two nodes, one SIGKILLed mid-run. Reentrant: every job finishes on the other. Not reentrant: the job
    running on the killed node ends Abandoned (expected, counted apart), every other job Finished."""
    started = time.monotonic()
    nodes, client = launch(lab, tmp_path, 2, reentrant=reentrant)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("done", 60, done=FAULT_AFTER)
    victim = nodes[0]
    at = time.monotonic()
    victim.kill()
    client.fault(victim, at, "SIGKILL")
    summary = client.finish(wait_timeout=60)
    name = ("2. one of 2 nodes SIGKILL (reentrant)" if reentrant
            else "3. one of 2 nodes SIGKILL (not reentrant)")
    conclude(record_outcome, name, started, JOBS, summary, nodes, client,
             abandon_ok_on=None if reentrant else victim.host.addr)


# ------------------------------------------------------------------------------- 4-5. frozen, cut off 30 s
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["sigstop", "link-down"])
def test_node_frozen_or_cut_off_for_30s(lab: Lab, tmp_path: Path, record_outcome: Record, fault: str) -> None:
    """Two nodes, pulse_interval=1: one is frozen (SIGSTOP) or loses its link for 30 s. The client declares it
    lost after 5 missed pulses and resubmits its jobs (reentrant=True); when it comes back, nothing arrives
    twice, and a second batch of jobs submitted after that finishes too."""
    started = time.monotonic()
    nodes, client = launch(lab, tmp_path, 2, reentrant=True, pulse_interval=1)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("done", 60, done=FAULT_AFTER)
    victim = nodes[0]
    at = time.monotonic()
    if fault == "sigstop":
        victim.signal(signal.SIGSTOP)
    else:
        victim.host.link_down()
    client.fault(victim, at, fault)
    try:
        time.sleep(max(0.0, at + OUTAGE - time.monotonic()))
    finally:
        if fault == "sigstop":
            victim.signal(signal.SIGCONT)
        else:
            victim.host.link_up()
    back = rejoin(client, victim, at + OUTAGE, 30)
    second = 40
    client.send(cmd="submit", first=JOBS, count=second)
    client.expect("submitted", 30)
    summary = client.finish(wait_timeout=60)
    name = ("4. node SIGSTOP 30 s, SIGCONT (pulse 1 s)" if fault == "sigstop"
            else "5. node link down 30 s, up (pulse 1 s)")
    conclude(record_outcome, name, started, JOBS + second, summary, nodes, client, rejoined=back)


# ---------------------------------------------------------------------------------------- 6. packet loss
@pytest.mark.timeout(150)
@pytest.mark.parametrize("percent", [10, 30])
def test_packet_loss_on_a_node_link(lab: Lab, tmp_path: Path, record_outcome: Record, percent: int) -> None:
    """Two nodes; one drops ``percent`` % of the packets it sends and, independently, of those it receives,
    for the whole run (nftables ``numgen random``): every result arrives exactly once."""
    if loss_tool() is None:
        pytest.skip("packet loss needs nft or iptables in the namespaces; neither is installed")
    started = time.monotonic()

    def lossy(nodes: list[FaultNode]) -> None:
        nodes[0].host.set_loss(percent)

    nodes, client = launch(lab, tmp_path, 2, reentrant=True, before_client=lossy)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("submitted", 30)
    summary = client.finish(wait_timeout=90)
    dropped = nodes[0].host.dropped()
    conclude(record_outcome, f"6. {percent} % packet loss on a node's link, both ways", started, JOBS, summary,
             nodes, client, note=f"{dropped} packets dropped at n0")
    assert dropped > 0, "the loss rules dropped nothing: the scenario did not test what it says"


# --------------------------------------------------------------------------- 7. the computation host killed
@pytest.mark.timeout(120)
def test_computation_host_process_killed(lab: Lab, tmp_path: Path, record_outcome: Record) -> None:
    """One node; mid-run, the computation's host process (the node's ``executor_host.host`` child, which
    forks the job processes) is SIGKILLed, as the OOM killer would: the node closes the computation, the client
    sets it up again, and every job finishes exactly once (reentrant=True)."""
    started = time.monotonic()
    [node], client = launch(lab, tmp_path, 1, reentrant=True)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("done", 60, done=FAULT_AFTER)
    hosts = node.executor_hosts()
    assert len(hosts) == 1, f"expected one computation host under dispynode {node.proc.pid}: {hosts}"
    at = time.monotonic()
    hosts[0].kill()
    client.fault(node, at, "host SIGKILL")
    summary = client.finish(wait_timeout=60)
    conclude(record_outcome, "7. computation host process SIGKILL (1 node, reentrant)", started, JOBS, summary,
             [node], client)


# ------------------------------------------------------------------- 8. client SIGKILL, then recover_jobs
RECOVER = """
import json, sys
import dispy
jobs = dispy.recover_jobs(sys.argv[1], timeout=60)
print(json.dumps([[job.id, int(job.status), job.result, str(job.exception or "")] for job in jobs]))
"""


@pytest.mark.timeout(150)
def test_client_killed_then_recover_jobs(lab: Lab, tmp_path: Path, record_outcome: Record) -> None:
    """Two nodes; the client program dies (SIGKILL) holding its 20th result. The nodes keep its jobs running
    and their results; ``dispy.recover_jobs`` run afterwards in the client's namespace returns every job the
    program did not have (each exactly once), and the nodes are released."""
    started = time.monotonic()
    recover_file = tmp_path / "_dispy_fault_matrix"
    nodes, client = launch(lab, tmp_path, 2, reentrant=False, recover_file=recover_file)
    client.send(cmd="die_after", count=FAULT_AFTER)
    client.send(cmd="submit", first=0, count=JOBS)
    client.expect("eof", 60)
    killed = time.monotonic()
    assert client.proc.wait(10) == -signal.SIGKILL
    delivered = {event["id"]: event for event in client.delivered}
    recovering = client.host.run(sys.executable, "-c", RECOVER, str(recover_file), timeout=120)
    assert recovering.returncode == 0, recovering.stderr[-3000:]
    recovered = json.loads(recovering.stdout.strip().splitlines()[-1])
    took = time.monotonic() - killed

    ids = [job_id for job_id, *_ in recovered]
    duplicated = len(ids) - len(set(ids)) + len(set(ids) & set(delivered))
    finished = {job_id: result for job_id, status, result, _ in recovered if status == JobStatus.Finished}
    # Never ran: still in the dead client, or sent and refused by a busy node (the node has no record of it)
    unsent = {job_id for job_id, status, _, why in recovered
              if status == JobStatus.Abandoned and ("before sending the job to any node" in why
                                                    or "has no record of it" in why)}
    problems = [f"job {n}: wrong result {finished[n]}" for n in finished if finished[n] != expected_result(n)]
    problems += [f"job {n}: delivered with {event['result']}" for n, event in delivered.items()
                 if event["status"] != JobStatus.Finished or event["result"] != expected_result(n)]
    problems += [f"job {job_id}: {JobStatus(status).name} ({why})" for job_id, status, _, why in recovered
                 if job_id not in finished and job_id not in unsent]
    missing = set(range(JOBS)) - set(delivered) - set(ids)
    problems += [f"job {n}: neither delivered nor recovered" for n in sorted(missing)]
    lost = len(problems)
    record_outcome(Outcome("8. client SIGKILL at its 20th result, then recover_jobs (2 nodes)", JOBS, lost,
                           duplicated, len(unsent), None, None, None, None, time.monotonic() - started,
                           f"delivered {len(delivered)}, recovered {len(finished)}",
                           f"recover_jobs took {took:.1f} s; {len(unsent)} never ran (in the client, or refused)"))
    context = "\n".join(problems[:15]) + f"\n--- client log:\n{tail(client.log_path, 25)}"
    assert lost == 0, context
    assert duplicated == 0, context
    assert len(delivered) == FAULT_AFTER - 1  # the 20th died with the program: it must come back
    assert finished, "nothing was in flight when the client died: the scenario did not test what it says"
    for node in nodes:
        log = node.log_path.read_text(errors="replace")
        assert "went away; its jobs go on" in log, tail(node.log_path)
        assert "closed after" in log.split("went away")[-1], tail(node.log_path)  # released by recover_jobs
    assert not recover_file.exists()
