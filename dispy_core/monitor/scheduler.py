"""``dispyscheduler --httpd``: the web monitor across every computation the scheduler runs.

Each open computation (a client's ``SharedJobCluster``) is one cluster on the monitor. The scheduler's objects
live on its event loop, so every view is computed there (``run_coroutine_threadsafe`` from the web server's
threads). :class:`SchedulerMonitor` is one of the server's ``BackendObserver``s: it adds a watch when a
computation is set up (before its first job), hands each job notice of its driver to that watch (the scheduler
relays jobs, it does not call the client's notification hooks) and removes it when the computation closes;
:func:`serve_monitor` is what `dispyscheduler --httpd` runs.

The scheduler never loads its clients' arguments (they stay opaque bytes), so the node page shows no
arguments; node actions (CPUs, allocation) stay the clients' (``set_node_cpus`` with ``--cooperative``):
here they answer -1.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dispy_core.client.connections import READY
from dispy_core.monitor.clusters import DONE_TIMES, bucket_counts, node_view
from dispy_core.monitor.server import DispyHTTPServer
from dispy_core.protocol import messages as m
from dispy_core.status import FINAL_JOB_STATES, JobStatus

if TYPE_CHECKING:
    from dispy_core.scheduler.backend import Backend
    from dispy_core.scheduler.front import SchedulerServer

log = logging.getLogger("dispy.httpd")

__all__ = ["ComputationWatch", "SchedulerMonitor"]

T = TypeVar("T")

ON_LOOP_TIMEOUT = 10.0


class ComputationWatch:
    """One client computation at the scheduler, with the views of ``clusters.ClusterWatch``."""

    def __init__(self, cid: int, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.cid = cid
        self.backend = backend
        self.name = str(backend.name)
        self.loop = loop
        self._lock = threading.Lock()
        self.submitted = 0
        self.ended: collections.Counter[str] = collections.Counter()
        self.done_times: dict[str, collections.deque[float]] = {}
        self.node_done: collections.Counter[str] = collections.Counter()
        self.node_time: collections.defaultdict[str, float] = collections.defaultdict(float)

    def detach(self) -> None:
        """Nothing to undo: the monitor stops handing it news when the computation closes."""

    def count(self, notice: Any, job: Any) -> None:
        """A job's news, from the scheduler's loop (see ``SchedulerMonitor.job_notice``)."""
        with self._lock:
            if notice.status == JobStatus.Created and notice.previous is None:
                self.submitted += 1
            if notice.status not in FINAL_JOB_STATES:
                return
            self.ended[JobStatus(notice.status).name] += 1
            node_key = job._node_key
            if notice.status == JobStatus.Finished and node_key:
                now = time.time()
                self.done_times.setdefault(node_key, collections.deque(maxlen=DONE_TIMES)).append(now)
                self.node_done[node_key] += 1
                outcome = notice.outcome
                if isinstance(outcome, m.JobResult) and outcome.end_time:
                    self.node_time[node_key] += max(0.0, outcome.end_time - outcome.start_time)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(ON_LOOP_TIMEOUT)

    # ------------------------------------------------------------------ views
    def counts(self) -> dict[str, Any]:
        pending, running = self._on_loop(self.backend.state.counts)
        with self._lock:
            return {"submitted": self.submitted, "done": self.ended["Finished"],
                    "failed": self.ended["Terminated"] + self.ended["Abandoned"], "cancelled": self.ended["Cancelled"],
                    "ended": dict(self.ended), "running": running, "pending": pending}

    def nodes(self) -> list[dict[str, Any]]:
        def collect() -> list[tuple[Any, bool]]:
            driver = self.backend._driver
            return [(driver.sync(conn), conn.state == READY) for conn in self.backend._life.nodes.values()]

        views = []
        for node, usable in self._on_loop(collect):
            view = node_view(node, usable)
            with self._lock:  # the scheduler relays results, so it counts them here
                done, spent = self.node_done[node.key], self.node_time[node.key]
            view.update(jobs_done=done, cpu_time=round(spent, 6), sec_per_job=round(spent / done, 6) if done else 0.0)
            views.append(view)
        return views

    def node_jobs(self, node_key: str) -> list[dict[str, Any]]:
        def running() -> list[dict[str, Any]]:
            driver = self.backend._driver
            uids = driver.state.running_uids(node_key)
            return [{"job": f"{self.cid}:{uid}", "id": str(uid), "status": JobStatus(driver.jobs[uid].status).name,
                     "start_time": driver.jobs[uid].start_time, "submit_time": driver.jobs[uid].submit_time}
                    for uid in uids if uid in driver.jobs]

        return self._on_loop(running)

    def cancel(self, uid: int) -> bool:
        if not self._on_loop(lambda: self.backend.has_job(uid)):
            return False
        asyncio.run_coroutine_threadsafe(self.backend.cancel(uid), self.loop).result(ON_LOOP_TIMEOUT)
        return True

    def throughput(self, start: float, step: float, buckets: int) -> dict[str, list[int]]:
        with self._lock:
            series = {key: list(times) for key, times in self.done_times.items()}
        return bucket_counts(series, start, step, buckets)

    # ------------------------------------------------------------------ actions: the clients'
    def set_cpus(self, node: str, cpus: int) -> int:
        return -1

    def allocate_node(self, node: Any) -> int:
        return -1

    def deallocate_node(self, node: str) -> int:
        return -1

    def close_node(self, node: str, terminate: bool = False) -> int:
        return -1

    def add_node(self, host: str, port: int | None, cpus: int) -> int:
        return -1


async def serve_monitor(server: SchedulerServer, **httpd_options: Any) -> None:
    """``dispyscheduler --httpd``: serve the monitor (``DispyHTTPServer``'s options, e.g. ``port``) until
    cancelled. Spawn it once ``server.start()`` has returned."""
    try:
        httpd = await asyncio.to_thread(DispyHTTPServer, None, **httpd_options)
    except (OSError, ValueError) as exc:
        log.error("--httpd: the web monitor cannot start: %s", exc)
        return
    await SchedulerMonitor(server, httpd).run()


class SchedulerMonitor:
    """The monitor of one :class:`SchedulerServer`: a watch per computation from the moment its back end is made
    (before any job) until it closes; the server tells it as one of its ``BackendObserver``s."""

    def __init__(self, server: SchedulerServer, httpd: DispyHTTPServer) -> None:
        self.server = server
        self.httpd = httpd
        self.watched: dict[str, int] = {}
        """comp_id -> the watch's cid on the monitor."""
        self.watches: dict[str, ComputationWatch] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Follow the scheduler's computations until cancelled; then the web server stops."""
        self.loop = asyncio.get_running_loop()
        for backend in list(self.server.arbiter.backends.values()):
            self.opened(backend)
        self.server.observers.append(self)
        try:
            await asyncio.Event().wait()
        finally:
            self.server.observers.remove(self)
            await asyncio.to_thread(self.httpd.shutdown, False)

    # ------------------------------------------------------------------ BackendObserver
    def opened(self, backend: Backend) -> None:
        assert self.loop is not None
        self.watch(backend, self.loop)

    def job_notice(self, backend: Backend, notice: Any, job: Any) -> None:
        watch = self.watches.get(backend.comp_id)
        if watch is not None:
            watch.count(notice, job)

    def closed(self, backend: Backend) -> None:
        cid = self.watched.pop(backend.comp_id, None)
        self.watches.pop(backend.comp_id, None)
        if cid is not None:
            self.httpd.remove_watch(cid)

    def watch(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        if backend.comp_id not in self.watched:
            def make(cid: int) -> ComputationWatch:
                watch = self.watches[backend.comp_id] = ComputationWatch(cid, backend, loop)
                return watch

            self.watched[backend.comp_id] = self.httpd.add_watch(make)
