"""The simulated node (dispy_core/testing/simnode.py) stays true to the protocol: a real JobCluster, unchanged,
uses a few of them as it uses real nodes, and every result arrives."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dispy
from dispy_core.channel import Channel
from dispy_core.protocol import messages as m
from dispy_core.testing.simnode import SimNodeProcess, SimulatedNodes, check_loopback, start_simulated_nodes
from dispy_core.testing.waiting import wait_for

SECRET = "simnode-test-secret"
ROOT = Path(__file__).resolve().parents[2]


def double_or_fail(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen")
    return x * 2


@pytest.fixture
def sim() -> Iterator[SimNodeProcess]:
    nodes = start_simulated_nodes(3, cpus=2, secret=SECRET)
    yield nodes
    nodes.stop()


def test_jobcluster_gets_every_result_from_simulated_nodes(sim: SimNodeProcess) -> None:
    where = [dispy.NodeAllocate(sim.host, port=port) for port in sim.ports]
    with dispy.JobCluster(double_or_fail, nodes=where, secret=SECRET, host="127.0.0.1",
                          loglevel=logging.WARNING) as cluster:
        jobs = [cluster.submit(i) for i in range(300)]
        assert cluster.wait(timeout=60)
        for i, job in enumerate(jobs):
            assert job is not None
            if i == 13:  # a job that raised comes back as a real node reports it
                assert job.status == dispy.DispyJob.Terminated and "thirteen" in (job.exception or "")
            else:
                assert job.status == dispy.DispyJob.Finished, job.exception
                assert job.result == 2 * i
        status = cluster.status()
        assert len(status["nodes"]) == 3 and not status["failed_nodes"], status
    assert sim.stop() == 0
    assert sim.stats["jobs"] == 300 and sim.stats["failed_jobs"] == 1
    assert sim.stats["computations"] == 3
    assert sorted(int(p) for p in sim.stats["by_port"]) == sorted(sim.ports)  # each node ran jobs


def test_simulated_node_refuses_a_client_without_the_secret(sim: SimNodeProcess) -> None:
    with dispy.JobCluster(double_or_fail, nodes=[dispy.NodeAllocate(sim.host, port=sim.ports[0])], secret="wrong",
                          host="127.0.0.1", loglevel=logging.CRITICAL) as cluster:
        failed = wait_for(lambda: cluster.status()["failed_nodes"], timeout=30)
        assert any("authentication" in why for why in failed.values()), failed
        assert not cluster.status()["nodes"]
    sim.stop()
    assert sim.stats["connections"] == 0 and sim.stats["jobs"] == 0


def test_only_loopback_is_served() -> None:
    assert check_loopback("127.0.0.5") == "127.0.0.5"
    for host in ("0.0.0.0", "192.0.2.1", "localhost-ish", ""):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)


@pytest.mark.timeout(150)
def test_bench_scale_quick_runs(tmp_path: Path) -> None:
    """bench/bench_scale.py --quick: a real node and simulated ones, every job checked, a row per count and series."""
    out_json = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--quick", "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "client CPU ms/job" in proc.stdout and "issue 14 target (mixed)" in proc.stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["series"], r["nodes"], r["real"]) for r in rows] == [("mixed", 1, 1), ("mixed", 8, 1),
                                                                    ("simulated", 1, 0), ("simulated", 8, 0)]
    assert all(not r["errors"] and r["client_cpu_ms_per_job"] > 0 for r in rows)


def test_in_process_nodes_announce_starts_and_pulse() -> None:
    """SimulatedNodes in a loop of the caller's, driven by a bare Channel: a scheduler's computation (announce_starts)
    gets JobStarted before each JobResult, and one with a pulse_interval gets pulses."""

    async def scenario() -> list[m.Message]:
        group = SimulatedNodes(1, cpus=2, secret=SECRET, answer="none")
        [port] = await group.start()
        try:
            ser = group.serializer
            channel = await Channel.connect(group.transport, "127.0.0.1", port, secret=SECRET,
                                            serializers={ser.name: ser}, serializer=ser.name, timeout=10)
            heard: asyncio.Queue[m.Message] = asyncio.Queue()
            reader = asyncio.ensure_future(channel.run(heard.put_nowait))
            opened = await channel.request(m.ComputationOpen(
                req_id=channel.next_req_id(), comp_id="c1", name="c", kind="function", cpus=1,
                options={"announce_starts": True, "pulse_interval": 0.1}), 10)
            assert isinstance(opened, m.ComputationReady) and opened.ok and opened.cpus == 1
            ready = await channel.request(m.ComputationSetup(channel.next_req_id(), "c1"), 10)
            assert isinstance(ready, m.ComputationReady) and ready.ok
            channel.send_nowait(m.JobSubmit("c1", 7, ser.dumps(((1,), {}))))
            got: list[m.Message] = []
            async with asyncio.timeout(20):
                while not {m.JobStarted, m.JobResult, m.Pulse} <= {type(msg) for msg in got}:
                    got.append(await heard.get())
            await channel.close()
            await reader
            return got
        finally:
            await group.stop()

    got = asyncio.run(scenario())
    kinds = [type(msg) for msg in got]
    assert kinds.index(m.JobStarted) < kinds.index(m.JobResult)
    result = next(msg for msg in got if isinstance(msg, m.JobResult))
    assert (result.comp_id, result.job_uid, result.status) == ("c1", 7, int(dispy.DispyJob.Finished))
