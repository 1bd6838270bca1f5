"""What the monitor knows of one client cluster (``JobCluster`` or ``SharedJobCluster``), as plain JSON-able dicts.

A :class:`ClusterWatch` hears the cluster through the core's notification hooks (``dispy_job_status``,
``dispy_node_status``, ``dispy_pulse_received``), registered on that cluster's own plugin manager: the
cluster's ``cluster_status`` and ``job_status`` callbacks stay the program's, untouched, and nothing in the
cluster had to change for the monitor. The hooks run on the cluster's loop thread, so they only count and
keep references, under a lock. Everything else (nodes' CPUs, busy, bytes; running jobs; cancel, CPUs,
allocation) goes through the cluster's public, thread-safe methods, from the web server's threads.

Every watch (and ``scheduler.py``'s) offers the same views; ``server.py`` serves them and ``metrics.py``
renders them for Prometheus.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from dispy_core.client.nodes import DispyNode, NodeAllocate
from dispy_core.hookspecs import hookimpl
from dispy_core.status import FINAL_JOB_STATES, JobStatus

__all__ = ["ARG_TEXT", "ClusterWatch", "DONE_TIMES", "bucket_counts", "job_view", "node_view"]

DONE_TIMES = 10_000
"""Job completion times kept per node for the throughput plot (the oldest go first)."""
ARG_TEXT = 200
"""Characters of a job's arguments shown (``show_job_args``)."""


def node_view(node: DispyNode, usable: bool = True) -> dict[str, Any]:
    """A node as the pages and the JSON endpoints show it."""
    avail = node.avail_info
    return {
        "key": node.key, "ip_addr": node.ip_addr, "port": node.port, "name": node.name, "cpus": node.cpus,
        "busy": node.busy, "jobs_done": node.jobs_done, "cpu_time": round(node.cpu_time, 6),
        "sec_per_job": round(node.cpu_time / node.jobs_done, 6) if node.jobs_done else 0.0,
        "tx": node.tx, "rx": node.rx, "update_time": node.update_time, "platform": node.platform,
        "avail": None if avail is None else {"cpu": avail.cpu, "memory": avail.memory, "disk": avail.disk,
                                             "swap": avail.swap},
        "status": "usable" if usable else "closed",
    }


def job_view(cid: int, job: Any, show_args: bool) -> dict[str, Any]:
    """A running job on the node page: ``job`` ("cid:uid") names it to ``/cancel_jobs``."""
    view: dict[str, Any] = {"job": f"{cid}:{job._uid}", "id": _text(job.id), "status": JobStatus(job.status).name,
                            "start_time": job.start_time, "submit_time": job.submit_time}
    if show_args:
        view["args"] = _text(", ".join(repr(a) for a in job.args))
        view["kwargs"] = _text(", ".join(f"{k}={v!r}" for k, v in job.kwargs.items()))
    return view


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= ARG_TEXT else text[:ARG_TEXT - 3] + "..."


class _Hooks:
    """The watch's hook implementations (a plugin object of one cluster's plugin manager)."""

    def __init__(self, watch: ClusterWatch) -> None:
        self.watch = watch

    @hookimpl
    def dispy_job_status(self, job: Any, previous: int | None) -> None:
        self.watch.job_changed(job, previous)

    @hookimpl
    def dispy_node_status(self, node: Any, previous: int | None) -> None:
        self.watch.node_seen(node)

    @hookimpl
    def dispy_pulse_received(self, node: Any, pulse: dict[str, Any]) -> None:
        self.watch.node_seen(node)


class ClusterWatch:
    """One cluster on the monitor: job counts, nodes seen, completion times; its actions."""

    def __init__(self, cid: int, cluster: Any, show_job_args: bool = True) -> None:
        self.cid = cid
        self.cluster = cluster
        self.name = str(cluster.name)
        self.show_job_args = show_job_args
        self._lock = threading.Lock()
        self.submitted = 0
        self.ended: collections.Counter[str] = collections.Counter()
        self.active: dict[int, Any] = {}
        self.done_times: dict[str, collections.deque[float]] = {}
        self.seen: dict[str, DispyNode] = {}
        self._hooks = _Hooks(self)
        cluster.plugins.register(self._hooks, name=f"dispy-monitor-{cid}-{id(self)}")

    def detach(self) -> None:
        """Stop hearing the cluster (``del_cluster``)."""
        pm = self.cluster.plugins.pm
        if pm.is_registered(self._hooks):
            pm.unregister(self._hooks)

    # ------------------------------------------------------------------ what the hooks say (loop thread)
    def job_changed(self, job: Any, previous: int | None) -> None:
        with self._lock:
            if previous is None and job.status == JobStatus.Created:
                self.submitted += 1
            if job.status in FINAL_JOB_STATES:
                if self.active.pop(job._uid, None) is not None or previous is not None:
                    self.ended[JobStatus(job.status).name] += 1
                node_key = getattr(job, "_node_key", None)
                if job.status == JobStatus.Finished and node_key:
                    times = self.done_times.setdefault(node_key, collections.deque(maxlen=DONE_TIMES))
                    times.append(job.end_time or time.time())
            else:
                self.active[job._uid] = job

    def node_seen(self, node: Any) -> None:
        if isinstance(node, DispyNode):
            with self._lock:
                self.seen[node.key] = node

    # ------------------------------------------------------------------ views (web server threads)
    def counts(self) -> dict[str, Any]:
        """Jobs submitted, done (Finished), failed (Terminated, Abandoned), cancelled, running, pending; and
        ``ended``: the count of each final status."""
        with self._lock:
            active = list(self.active.values())
            counts: dict[str, Any] = {"submitted": self.submitted, "done": self.ended["Finished"],
                                      "failed": self.ended["Terminated"] + self.ended["Abandoned"],
                                      "cancelled": self.ended["Cancelled"], "ended": dict(self.ended)}
        counts["running"] = sum(1 for job in active if job.status in (JobStatus.Running, JobStatus.ProvisionalResult))
        counts["pending"] = sum(1 for job in active if job.status == JobStatus.Created)
        return counts

    def nodes(self) -> list[dict[str, Any]]:
        status = self.cluster.status()
        usable = {node.key: node for node in status["nodes"]}
        with self._lock:
            for key, node in usable.items():
                self.seen.setdefault(key, node)
            seen = list(self.seen.values())
        return [node_view(node, node.key in usable) for node in seen]

    def node_jobs(self, node_key: str) -> list[dict[str, Any]]:
        jobs = self.cluster.node_jobs(node_key)
        with self._lock:  # the jobs the watch knows (the program's DispyJob objects)
            for job in jobs:
                self.active.setdefault(job._uid, job)
        return [job_view(self.cid, job, self.show_job_args) for job in jobs]

    def cancel(self, uid: int) -> bool:
        with self._lock:
            job = self.active.get(uid)
        return job is not None and self.cluster.cancel(job) == 0

    def throughput(self, start: float, step: float, buckets: int) -> dict[str, list[int]]:
        """Jobs finished per node in each of ``buckets`` intervals of ``step`` seconds from ``start``."""
        with self._lock:
            series = {key: list(times) for key, times in self.done_times.items()}
        return bucket_counts(series, start, step, buckets)

    # ------------------------------------------------------------------ actions (the cluster's public methods)
    def set_cpus(self, node: str, cpus: int) -> int:
        return int(self.cluster.set_node_cpus(node, cpus))

    def allocate_node(self, node: Any) -> int:
        return int(self.cluster.allocate_node(node))

    def deallocate_node(self, node: str) -> int:
        return int(self.cluster.deallocate_node(node))

    def close_node(self, node: str, terminate: bool = False) -> int:
        return int(self.cluster.close_node(node, terminate=terminate))

    def add_node(self, host: str, port: int | None, cpus: int) -> int:
        return self.allocate_node(NodeAllocate(host, port=port, cpus=cpus))


def bucket_counts(series: dict[str, list[float]], start: float, step: float, buckets: int) -> dict[str, list[int]]:
    """Per key, how many of its times fall in each of ``buckets`` intervals of ``step`` s from ``start``."""
    out: dict[str, list[int]] = {}
    for key, times in series.items():
        counts = [0] * buckets
        for t in times:
            index = int((t - start) // step)
            if 0 <= index < buckets:
                counts[index] += 1
        out[key] = counts
    return out
