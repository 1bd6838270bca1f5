"""The monitor across a dispyscheduler's computations (``dispyscheduler --httpd``): a real scheduler server (in
this process, on its own loop thread) with a real dispynode, and a SharedJobCluster client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.monitor.scheduler import SchedulerMonitor
from dispy_core.monitor.server import DispyHTTPServer
from dispy_core.scheduler.cli import build_parser, build_server
from dispy_core.testing.nodes import NodeProcess, start_node
from dispy_core.testing.scheduler import free_scheduler_base
from dispy_core.testing.waiting import wait_for
from tests.integration.test_monitor import Browserless

NODE_SECRET, CLUSTER_SECRET = "sched-monitor-node-secret", "sched-monitor-cluster-secret"


def compute(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[NodeProcess, int, DispyHTTPServer]]:
    (tmp_path / "node").mkdir()
    node = start_node(["-c", "2"], secret=NODE_SECRET, prefix=tmp_path / "node")
    base = free_scheduler_base()
    parser = build_parser()
    args = parser.parse_args(["-n", f"127.0.0.1:{node.port}", "-p", str(base), "-i", "127.0.0.1",
                              "--node_secret", NODE_SECRET, "--cluster_secret", CLUSTER_SECRET,
                              "--dest_path_prefix", str(tmp_path / "scheduler")])
    server = build_server(args, parser)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    httpd: list[DispyHTTPServer] = []

    async def run() -> None:
        await server.start()
        monitor = DispyHTTPServer(None, port=0, poll_sec=1)
        httpd.append(monitor)
        task = asyncio.ensure_future(SchedulerMonitor(server, monitor).run())
        started.set()
        try:
            await server.serve_forever()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        assert started.wait(30), "the scheduler did not start"
        yield node, base, httpd[0]
    finally:
        loop.call_soon_threadsafe(server.request_stop)
        thread.join(30)
        node.stop()


def test_monitor_across_the_scheduler_computations(scheduler: tuple[NodeProcess, int, DispyHTTPServer]) -> None:
    node, base, monitor = scheduler
    client = Browserless(monitor.web.port)
    cluster = dispy.SharedJobCluster(compute, scheduler_node="127.0.0.1", port=base, secret=CLUSTER_SECRET)
    try:
        jobs = [cluster.submit(0.05) for _ in range(3)]
        assert all(job is not None and job(timeout=30) == 0.05 for job in jobs)
        long_job = cluster.submit(30)
        assert long_job is not None
        status = wait_for(lambda: [c for c in client.json("/cluster_status")["clusters"]
                                   if c["jobs"]["done"] == 3 and c["jobs"]["running"] == 1])
        assert status[0]["name"] == "compute" and status[0]["cpus"] == 2 and status[0]["jobs"]["submitted"] == 4
        key = f"127.0.0.1:{node.port}"
        nodes = client.json("/nodes")["clusters"][0]["nodes"]
        assert [(n["key"], n["jobs_done"], n["cpus"]) for n in nodes] == [(key, 3, 2)]
        throughput = client.json("/throughput")["clusters"][0]["nodes"]
        assert sum(throughput[key]) == 3
        running = wait_for(lambda: client.json(f"/node_info?node={key}")["jobs"])
        assert len(running) == 1 and "args" not in running[0]  # the scheduler never loads arguments
        assert client.post("/cancel_jobs", {"job": running[0]["job"]})["cancelled"] == [running[0]["job"]]
        assert long_job.wait(30) and long_job.status in (dispy.DispyJob.Cancelled, dispy.DispyJob.Terminated)
        metrics = client.request("GET", "/metrics")[2].decode()
        assert f'dispy_node_jobs_done_total{{cid="1",cluster="compute",node="{key}"}} 3' in metrics
    finally:
        cluster.close(timeout=10, terminate=True)
    wait_for(lambda: client.json("/cluster_status")["clusters"] == [])  # a closed computation leaves the monitor


def test_dispyscheduler_httpd_option(tmp_path: Path) -> None:
    """The real program: ``dispyscheduler --httpd --httpd_port N`` serves the monitor while it runs."""
    import socket
    import urllib.request

    from dispy_core.testing.scheduler import start_scheduler

    (tmp_path / "node").mkdir()
    node = start_node(["-c", "1"], secret=NODE_SECRET, prefix=tmp_path / "node")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sched = start_scheduler([node], ["--httpd", "--httpd_port", str(port)], cluster_secret=CLUSTER_SECRET,
                            node_secret=NODE_SECRET, prefix=tmp_path)
    try:
        def answer() -> Any:
            try:
                return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster_status", timeout=5).read())
            except OSError:
                return None

        assert wait_for(answer)["clusters"] == []
        assert "dispy monitor serving at http://127.0.0.1:" in sched.log()
    finally:
        sched.stop()
        node.stop()
