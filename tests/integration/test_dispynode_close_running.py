"""Closing a computation while its jobs run: their results still reach the client, CPUs are freed."""

from __future__ import annotations

import time

import dispy
from dispy_core.protocol import messages as m
from dispy_core.testing.nodes import NodeProcess


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_results_of_running_jobs_survive_a_close(node: NodeProcess) -> None:
    cluster = dispy.JobCluster(nap, nodes=["127.0.0.1"], dispy_port=node.base_port)
    try:
        job = cluster.submit(1.5)
        assert job is not None
        deadline = time.monotonic() + 30
        while job.status != dispy.DispyJob.Running and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        conn = next(iter(cluster._life.nodes.values()))
        channel = conn.channel
        assert channel is not None
        # Close on the node directly (the client API itself waits for jobs first).
        reply = cluster._loop.run(channel.request(
            m.ComputationClose(channel.next_req_id(), cluster.comp_id, False), 30), timeout=40)
        assert isinstance(reply, m.ComputationClosed)
        assert job(timeout=10) == 1.5
        assert job.status == dispy.DispyJob.Finished
        info = cluster._loop.run(channel.request(m.NodeInfoRequest(channel.next_req_id()), 10), timeout=20)
        assert isinstance(info, m.NodeInfo) and info.avail_cpus == info.cpus  # no CPU leaked
    finally:
        cluster.close(timeout=5, terminate=True)
