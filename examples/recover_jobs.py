"""Results survive a client that dies: ``dispy.recover_jobs`` collects them from the nodes afterwards.

    python examples/recover_jobs.py

Every cluster records what it sent where in its ``recover_file``. Here a client program is killed
(``os._exit``) while its jobs run (one per CPU of the node); the node goes on running them and keeps their
results. Afterwards, ``recover_jobs(recover_file)`` connects to the nodes named in the file and returns
one DispyJob per job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _local import example_nodes

import dispy

STATUS_NAMES = {getattr(dispy.DispyJob, name): name for name in (
    "Created", "Running", "ProvisionalResult", "Cancelled", "Terminated", "Abandoned", "Finished")}


def slow_square(n: int) -> int:
    import time

    time.sleep(1.5)
    return n * n


def doomed_client(recover_file: str, host: str, port: int) -> None:
    """Submit one job per CPU of the node, wait until they all run there, then die without closing."""
    cluster = dispy.JobCluster(slow_square, nodes=[(host, port)], recover_file=recover_file)  # DISPY_SECRET
    deadline = time.monotonic() + 30
    while not cluster.status()["nodes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    cpus = cluster.status()["nodes"][0].cpus
    jobs = [cluster.submit_job_id(f"square-{n}", n) for n in range(cpus)]
    while not all(job.status == dispy.DispyJob.Running for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)  # Running: the node started it (a job still at the client could not be recovered)
    print(f"client: {sum(job.status == dispy.DispyJob.Running for job in jobs)} jobs running; dying now", flush=True)
    os._exit(1)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dispy-recover-") as work, example_nodes(1) as where:
        recover_file = str(Path(work) / "recover.dat")
        (host, port), = where.nodes
        client = subprocess.run([sys.executable, __file__, "--client", recover_file, host, str(port)],
                                env={**os.environ, "DISPY_SECRET": where.secret}, timeout=60)
        print(f"client exited with status {client.returncode}; recovering from {recover_file}")
        jobs = dispy.recover_jobs(recover_file, timeout=30)
        for job in sorted(jobs, key=lambda job: job.id):
            print(f"  {job.id}: {STATUS_NAMES[job.status]}, result {job.result}")
    assert jobs and sorted((job.id, job.result) for job in jobs) == [(f"square-{n}", n * n) for n in range(len(jobs))]
    assert all(job.status == dispy.DispyJob.Finished for job in jobs)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        doomed_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    raise SystemExit(main())
