"""The client side of a fault scenario: a real dispy program, run in its own network namespace.

Run by ``test_fault_matrix.py`` as ``ip netns exec NS python client_program.py CONFIG_JSON``. It speaks
JSON lines: commands on stdin (``submit``, ``fault``, ``wait_node``, ``finish``), events on stdout
(``ready``, ``submitted``, ``done`` per final callback, ``node``, ``summary``). Everything it saw is
recorded as it happened (every ``job_status`` callback with a final status, every ``Running``
announcement and node event of ``cluster_status``), so the test judges lost and duplicated results
from the program's own view. A watchdog ends it with a partial summary if the test never says finish.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

import dispy
from dispy_core.status import JobStatus

FINAL = (dispy.DispyJob.Finished, dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned, dispy.DispyJob.Cancelled)


def compute(n: int, pause: float) -> int:
    """A short job whose result depends on its argument, so a wrong or swapped result shows."""
    import time

    time.sleep(pause)
    return n * 7919 + 13


class Recorder:
    """What the program saw, with monotonic times (shared with the test process: same clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.finals: dict[int, list[dict[str, Any]]] = {}
        self.running_on: dict[int, list[list[Any]]] = {}
        self.node_events: list[list[Any]] = []
        self.fault: dict[str, Any] | None = None
        self.detect: tuple[float, str] | None = None
        self.stop = threading.Event()
        self.die_after = 0
        """With the ``die_after`` command: SIGKILL this program at that many final results."""

    def emit(self, **event: Any) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def job_status(self, job: dispy.DispyJob) -> None:
        if job.status not in FINAL:
            return
        now = time.monotonic()
        record = {"status": int(job.status), "result": job.result if job.status == dispy.DispyJob.Finished else None,
                  "ip": job.ip_addr, "t": now, "exception": (str(job.exception)[-300:] if job.exception else None)}
        with self.lock:
            self.finals.setdefault(job.id, []).append(record)
            if job.status != dispy.DispyJob.Finished:
                self._detected(now, f"a job ended {JobStatus(job.status).name}")
        if self.die_after and sum(len(finals) for finals in self.finals.values()) >= self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash holding this result: recover_jobs must bring it back
        self.emit(event="done", id=job.id, status=int(job.status), t=now, result=record["result"])

    def cluster_status(self, status: int, node: Any, job: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if job is not None:
                if status == dispy.DispyJob.Running:
                    ip = node.ip_addr if node is not None else job.ip_addr
                    history = self.running_on.setdefault(job.id, [])
                    if self.fault and history and history[-1][0] == self.fault["ip"] and now > self.fault["t"]:
                        self._detected(now, "a job resubmitted")
                    history.append([ip, now])
                return
            if node is None:
                return
            self.node_events.append([now, int(status), node.key, node.reason])
            if self.fault and node.key == self.fault["key"] and status == dispy.DispyNode.Closed:
                self._detected(now, "node Closed")

    def _detected(self, now: float, how: str) -> None:
        """The first sign after the fault that the client noticed it (caller holds the lock)."""
        if self.fault is not None and self.detect is None and now >= self.fault["t"]:
            self.detect = (now - self.fault["t"], how)


def watch(cluster: dispy.JobCluster, rec: Recorder) -> None:
    """Poll the cluster's view of the faulty node until the fault is detected (or the program ends)."""
    assert rec.fault is not None
    key = rec.fault["key"]
    while not rec.stop.is_set() and rec.detect is None:
        status = cluster.status()
        now = time.monotonic()
        how = None
        if key in status["failed_nodes"]:
            how = "in failed_nodes"
        elif key not in {node.key for node in status["nodes"]}:
            how = "gone from nodes"
        if how is not None:
            with rec.lock:
                rec._detected(now, how)
        rec.stop.wait(0.05)


def wait_node(cluster: dispy.JobCluster, key: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if key in {node.key for node in cluster.status()["nodes"]}:
            return time.monotonic()
        time.sleep(0.05)
    return None


def summary(cluster: dispy.JobCluster, rec: Recorder, jobs: dict[int, dispy.DispyJob],
            waited: dict[str, Any]) -> dict[str, Any]:
    try:
        status = cluster.status()
        nodes = [node.key for node in status["nodes"]]
        failed = dict(status["failed_nodes"])
    except Exception as exc:  # a summary must come out even from a broken cluster
        nodes, failed = [], {"status() failed": repr(exc)}
    with rec.lock:
        return {
            "submitted": sorted(jobs),
            "jobs": {str(i): {"status": int(job.status), "ip": job.ip_addr,
                              "finals": rec.finals.get(i, []), "running_on": rec.running_on.get(i, [])}
                     for i, job in jobs.items()},
            "node_events": rec.node_events, "fault": rec.fault,
            "detect": rec.detect[0] if rec.detect else None, "detect_how": rec.detect[1] if rec.detect else None,
            "nodes": nodes, "failed_nodes": failed, **waited,
        }


def main() -> int:
    config = json.loads(sys.argv[1])
    rec = Recorder()
    nodes = [dispy.NodeAllocate(ip, port=port) for ip, port in config["nodes"]]
    cluster = dispy.JobCluster(compute, nodes=nodes, secret=config["secret"], reentrant=config["reentrant"],
                               pulse_interval=config.get("pulse_interval"), job_status=rec.job_status,
                               cluster_status=rec.cluster_status, recover_file=config.get("recover_file"))
    jobs: dict[int, dispy.DispyJob] = {}
    waited: dict[str, Any] = {"wait_returned": None, "wait_seconds": None, "watchdog": False}

    def watchdog() -> None:
        waited["watchdog"] = True
        rec.emit(event="summary", summary=summary(cluster, rec, jobs, waited))
        os._exit(3)

    timer = threading.Timer(config["max_runtime"], watchdog)
    timer.daemon = True
    timer.start()
    keys = [f"{ip}:{port}" for ip, port in config["nodes"]]
    ready = [wait_node(cluster, key, config.get("ready_timeout", 60)) for key in keys]
    rec.emit(event="ready", ok=all(t is not None for t in ready))
    for line in sys.stdin:
        command = json.loads(line)
        name = command["cmd"]
        if name == "submit":
            for n in range(command["first"], command["first"] + command["count"]):
                job = cluster.submit_job_id(n, n, config["pause"])
                if job is not None:
                    jobs[n] = job
            rec.emit(event="submitted", count=len(jobs))
        elif name == "die_after":
            rec.die_after = command["count"]
        elif name == "fault":
            with rec.lock:
                rec.fault = {"key": command["key"], "ip": command["key"].rsplit(":", 1)[0], "t": command["t"],
                             "what": command.get("what", "")}
            threading.Thread(target=watch, args=(cluster, rec), daemon=True).start()
        elif name == "wait_node":
            rec.emit(event="node", key=command["key"], up=wait_node(cluster, command["key"], command["timeout"]))
        elif name == "finish":
            start = time.monotonic()
            waited["wait_returned"] = cluster.wait(timeout=command["timeout"])
            waited["wait_seconds"] = time.monotonic() - start
            time.sleep(command.get("grace", 1.0))  # callbacks still queued, late duplicates, come in now
            rec.stop.set()
            rec.emit(event="summary", summary=summary(cluster, rec, jobs, waited))
            break
    closer = threading.Thread(target=cluster.close, kwargs={"timeout": 5, "terminate": True}, daemon=True)
    closer.start()
    closer.join(20)
    rec.emit(event="closed", ok=not closer.is_alive())
    sys.stdout.flush()
    os._exit(0)  # a cluster thread stuck on a broken node must not keep the program (and the test) waiting


if __name__ == "__main__":
    sys.exit(main())
