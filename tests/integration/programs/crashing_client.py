"""A client program that dies (SIGKILL, by its own hand) in the middle of its jobs.

Usage: crashing_client.py PORT[,PORT...] RECOVER_FILE OUT_FILE JOBS KILL_AFTER [SECRET [NAP]]

Each job's result reaches OUT_FILE from the job_status callback; at the KILL_AFTER-th result the
program kills itself before writing that one, as a crash would: the result is the program's to lose
and ``recover_jobs`` must bring it back, while none already written may come back twice. With
KILL_AFTER 0 it dies once every node runs a job. NAP > 0: every job sleeps that long.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import dispy


def compute(n: int, nap: float) -> int:
    import time

    time.sleep(nap or 0.05 + (n % 4) * 0.1)
    return n * n


def main() -> None:
    ports, recover_file, out_path, count, kill_after = sys.argv[1:6]
    secret = sys.argv[6] if len(sys.argv) > 6 else ""
    nap = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    out = open(out_path, "w", encoding="utf-8")  # noqa: SIM115 - written until the process dies
    seen = [0]

    def job_status(job: dispy.DispyJob) -> None:
        if job.status != dispy.DispyJob.Finished:
            return
        seen[0] += 1
        if seen[0] == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        out.write(f"{job.id} {job.result}\n")
        out.flush()

    nodes = [dispy.NodeAllocate("127.0.0.1", port=int(port)) for port in ports.split(",")]
    cluster = dispy.JobCluster(compute, nodes=nodes, job_status=job_status, recover_file=recover_file,
                               secret=secret)
    jobs = [cluster.submit(n, nap) for n in range(int(count))]
    if int(kill_after) == 0:
        deadline = time.monotonic() + 60
        while sum(1 for job in jobs if job is not None and job.status == dispy.DispyJob.Running) < len(nodes):
            if time.monotonic() > deadline:
                sys.exit(4)
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    cluster.wait(timeout=120)
    print("the program was meant to die before its jobs were done", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main()
