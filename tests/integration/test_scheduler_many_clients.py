"""Robustness: eight client programs (processes) share three nodes at once through one dispyscheduler."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.scheduler import start_scheduler

NODE_SECRET, CLUSTER_SECRET = "node-secret", "cluster-secret"
PROGRAMS, JOBS = 8, 12

PROGRAM = f"""
import json, sys, dispy

def compute(n):
    import time
    time.sleep(0.05)
    return n * n, dispy_node_name

cluster = dispy.SharedJobCluster(compute, scheduler_node=sys.argv[1], scheduler_port=int(sys.argv[2]),
                                 secret={CLUSTER_SECRET!r})
jobs = [cluster.submit(i) for i in range({JOBS})]
results = [job() for job in jobs]
print(json.dumps({{"results": [r[0] if r else None for r in results], "nodes": sorted({{r[1] for r in results if r}}),
                   "statuses": sorted({{int(job.status) for job in jobs}})}}))
cluster.close()
"""


def test_eight_programs_share_three_nodes_and_each_gets_all_results(
        node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    nodes = [node_factory("-c", "1", "--name", f"node{i}", secret=NODE_SECRET) for i in range(3)]
    (tmp_path / "scheduler").mkdir()
    scheduler = start_scheduler(nodes, ["--fair_cluster_scheduler"], cluster_secret=CLUSTER_SECRET,
                                node_secret=NODE_SECRET, prefix=tmp_path / "scheduler")
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    procs: list[subprocess.Popen[str]] = []
    try:
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, str(script), scheduler.host, str(scheduler.port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(PROGRAMS)]
        outputs = [proc.communicate(timeout=60) for proc in procs]
        elapsed = time.monotonic() - started
        used: set[str] = set()
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
            report = json.loads(out.strip().splitlines()[-1])
            assert report["results"] == [i * i for i in range(JOBS)], err
            assert report["statuses"] == [11]  # every job Finished
            used.update(report["nodes"])
        assert used == {"node0", "node1", "node2"}
        log = scheduler.wait_log("closed")
        assert log.count(") closed") == PROGRAMS, log
        assert elapsed < 40
    finally:
        for proc in procs:  # only on failure are any still running
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        scheduler.stop()
