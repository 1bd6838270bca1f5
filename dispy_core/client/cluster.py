"""JobCluster: the public, synchronous, thread-safe face of a client; all networking on its loop thread.

Every public method may be called from any thread: it either only touches state guarded by the
cluster's lock, or posts its work into the loop thread and waits for the answer there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from dispy_core.client.allocation import NodeEntry, parse_nodes
from dispy_core.client.computation import Package, file_depend, package
from dispy_core.client.connections import READY
from dispy_core.client.driver import ClientDriver
from dispy_core.client.files import send_file_depend
from dispy_core.client.job import DispyJob
from dispy_core.client.nodeops import NodeOps
from dispy_core.client.nodes import DispyNode
from dispy_core.client.progress import JobCounts, status_table
from dispy_core.client.recovery import RecoverLog
from dispy_core.client.runtime import CallbackThread, LoopThread
from dispy_core.config import load_config
from dispy_core.errors import DispyError, SerializationError
from dispy_core.joblimits import check_job_limits
from dispy_core.logsetup import show_library_records
from dispy_core.malloc_tuning import tune_malloc
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol.session import MAX_PAYLOAD, secret_key
from dispy_core.state import events as ev
from dispy_core.state.cluster import ALLOWED_FAILURES, PIPELINE
from dispy_core.status import FINAL_JOB_STATES, JobStatus

log = logging.getLogger("dispy")

DEFAULT_DISPY_PORT = 9700
DEEP_PIPELINE = 16
"""Jobs per node CPU in flight at most, when the node's jobs are short (``ClusterState``'s "Capacity")."""
_cluster_ids = itertools.count(1)
T = TypeVar("T")


def check_jobs_per_process(value: Any) -> int:
    """``jobs_per_process`` (an extension; like ``multiprocessing.Pool``'s ``maxtasksperchild``).

    1, the default, is the original's model: every job in a fresh process, so nothing a job does to
    its globals reaches another job. N > 1 lets one job process run up to N jobs of this computation
    in turn: far less CPU per tiny job, but a job sees what earlier jobs in its process left behind.
    """
    if type(value) is not int or value < 1:
        raise ValueError(f"jobs_per_process must be an integer of at least 1, not {value!r}")
    return value


def check_allowed_failures(value: Any) -> int:
    """``allowed_failures`` (an extension, as in Dask): how many times a job may be running on a node that is
    lost before it ends Abandoned instead of being resubmitted (``reentrant`` or ``dispy_recover``)."""
    if type(value) is not int or value < 1:
        raise ValueError(f"allowed_failures must be an integer of at least 1, not {value!r}")
    return value


def check_first_node_timeout(value: Any) -> float | None:
    """``first_node_timeout`` (an extension): seconds jobs may wait for a first usable node before they end
    Abandoned with the reasons; None (the default) waits while a node may still come."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"first_node_timeout must be a positive number of seconds or None, not {value!r}")
    return float(value)


def check_max_payload(value: Any) -> int:
    """``max_payload`` (an extension; node config ``transport.max_payload``): bytes one argument set, result
    or provisional result may have (1 GiB by default); larger ones travel in 8 MiB fragments."""
    if type(value) is not int or value < 1 << 20:
        raise ValueError(f"max_payload must be a number of bytes of at least 1 MiB, not {value!r}")
    return value


PAYLOAD_MARGIN = 4096
"""What a message adds to a payload (field names, ids): a payload must leave that much room."""


class JobCluster:
    """Runs ``computation`` on the given nodes; see the client API reference for every parameter."""

    def __init__(self, computation: Any, nodes: Any = None, depends: list[Any] | None = None,
                 job_status: Any = None, cluster_status: Any = None, host: Any = None, ext_host: Any = None,
                 dispy_port: int | None = None, ipv4_udp_multicast: bool = False, dest_path: str | None = None,
                 loglevel: int | None = None, setup: Any = None, cleanup: Any = True,
                 ping_interval: float | None = None, pulse_interval: float | None = None,
                 reentrant: bool = False, secret: str = "", keyfile: str | None = None,
                 certfile: str | None = None, recover_file: str | None = None, **extra: Any) -> None:
        unknown = set(extra) - {"cafile", "setup_timeout", "msg_timeout", "poll_interval", "plugins",
                                "jobs_per_process", "allowed_failures", "max_payload",
                                "first_node_timeout", "job_limits"}
        if unknown:
            raise TypeError(f"JobCluster got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        tune_malloc()
        if loglevel is not None:  # the original's meaning: dispy's records from this level on are shown
            show_library_records(loglevel)
        if keyfile and not certfile:
            raise ValueError("keyfile needs certfile")
        for name, path in (("certfile", certfile), ("keyfile", keyfile), ("cafile", extra.get("cafile"))):
            if path and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} is not a readable file")
        if not isinstance(cleanup, bool) and not callable(cleanup):
            raise ValueError(f"cleanup must be True, False or a function, not {cleanup!r}")
        public = _public_config()
        self.config = load_config("client", certfile=certfile, keyfile=keyfile, cafile=extra.get("cafile"),
                                  msg_timeout=extra.get("msg_timeout") or getattr(public, "MsgTimeout", None))
        self.max_file_size = int(getattr(public, "MaxFileSize", 0) or 0)
        self.plugins = DispyPluginManager(self.config)
        for plugin in extra.get("plugins") or ():  # extension: plugin objects for this cluster only
            self.plugins.register(plugin)
        self.serializer = self.plugins.make_serializer()
        self.scheduler = self.plugins.make_scheduler()
        self.discovery = self.plugins.make_discovery()
        self.transport = self.plugins.make_transport("tcp")

        self.secret = secret or os.environ.get("DISPY_SECRET", "")
        self.node_port = public.node_port(dispy_port) if public else (dispy_port or DEFAULT_DISPY_PORT) + 1
        if nodes is None:
            env_nodes = os.environ.get("DISPY_NODES", "")
            nodes = [n.strip() for n in env_nodes.split(",") if n.strip()] or ["*"]
        self._entries: list[NodeEntry] = parse_nodes(nodes, self.node_port)
        self.client_port = public.port(public.ClientPort, dispy_port) if public else self.node_port - 1
        self.ipv4_udp_multicast = bool(ipv4_udp_multicast)
        self.multicast_groups = {"ipv4_group": getattr(public, "IPv4MulticastGroup", "239.255.97.5"),
                                 "ipv6_group": getattr(public, "IPv6MulticastGroup", "ff05::674f:59")}
        self._pkg: Package = package(computation, list(depends or []), setup, cleanup, self.serializer)
        self._cleanup_files = cleanup is not False
        self.dest_path = dest_path
        self.setup_timeout = float(extra.get("setup_timeout", 600.0))
        self.jobs_per_process = check_jobs_per_process(extra.get("jobs_per_process", 1))
        self.deep_pipeline = DEEP_PIPELINE
        self.job_limits = check_job_limits(extra.get("job_limits"))  # each node bounds them by its own
        self.allowed_failures = check_allowed_failures(extra.get("allowed_failures", ALLOWED_FAILURES))
        self.first_node_timeout = check_first_node_timeout(extra.get("first_node_timeout"))
        self.max_payload = check_max_payload(extra.get("max_payload", self.config.get("transport.max_payload",
                                                                                     MAX_PAYLOAD)))
        if pulse_interval is not None and not (isinstance(pulse_interval, int | float)
                                                and 1 <= pulse_interval <= 600):
            raise ValueError(f"pulse_interval must be a number of seconds between 1 and 600, not {pulse_interval!r}")
        self.reentrant = reentrant
        self.pulse_interval = pulse_interval
        self.host = host
        self.name = f"{self._pkg.name}"
        self.comp_id = f"{self._pkg.name[:40]}-{uuid.uuid4().hex[:16]}"
        self.job_status = job_status
        self.cluster_status = cluster_status

        self._recover_log = RecoverLog.open(recover_file, {
            "comp_id": self.comp_id, "name": self.name, "kind": self._pkg.kind, "serializer": self.serializer.name,
            "key": secret_key(self.secret).hex(), "created": time.time(),
            **{name: os.path.abspath(path) for name, path in
               (("certfile", certfile), ("keyfile", keyfile), ("cafile", extra.get("cafile"))) if path}})
        self.recover_file = self._recover_log.path if self._recover_log is not None else None
        """Where this cluster records what it sent where, for ``dispy.recover_jobs`` after a crash."""

        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self._unfinished = 0
        self._jobs: dict[int, DispyJob] = {}
        self._held: weakref.WeakSet[DispyJob] = weakref.WeakSet()
        self._inbox: list[DispyJob] = []
        """Jobs submitted and not yet taken by the loop: one wake-up of the loop takes them all."""
        """Every job submitted that the program still holds: what ``as_completed()`` waits for by default."""
        self._self_ref = weakref.ref(self)
        self._counts = JobCounts()
        self._uids = itertools.count(1)
        self._closed = False
        self._start_time = time.time()
        self._loop = LoopThread(f"dispy-{next(_cluster_ids)}")
        self._callbacks = CallbackThread("dispy-callbacks") if (job_status or cluster_status) else None
        self._discovered = threading.Event()
        self._driver = ClientDriver(self)
        self._life = self._driver.life
        self._ops = NodeOps(self)
        self._loop.submit(self._discover_initial())

    # ================================================================== public API: jobs
    def submit(self, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job; returns the DispyJob (None if the arguments cannot be serialized)."""
        return self._submit(None, args, kwargs)

    def submit_node(self, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Queue a job for one particular node (DispyNode, address or name); None if it is not in the cluster."""
        return self._submit(node, args, kwargs)

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """``submit`` with the job's ``id`` set before anything (a callback included) can see it."""
        return self._submit(None, args, kwargs, job_id)

    def submit_job_id_node(self, job_id: Any, node: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """``submit_node`` with the job's ``id`` set first."""
        return self._submit(node, args, kwargs, job_id)

    def _submit(self, node: Any, args: tuple[Any, ...], kwargs: dict[str, Any], job_id: Any = None) -> DispyJob | None:
        if self._closed:
            raise RuntimeError("cluster is closed; create a new one to submit jobs")
        job_depends = kwargs.pop("dispy_job_depends", None) or []
        if self._pkg.kind == "program":
            if kwargs:
                raise TypeError("a program computation takes positional string arguments only")
            args = tuple(str(a) for a in args)
        pinned = None
        if node is not None:
            pinned = self._call(self._ops.pin_key, node, default=None)
            if pinned is None:
                log.warning("job not submitted: node %r is not in cluster %s", node, self.name)
                return None
        uid = next(self._uids)
        job = DispyJob(uid, args, kwargs)
        job._cluster = self._self_ref
        if job_id is not None:
            job.id = job_id
        try:
            job._payload, job_paths = self._pkg.pack_job(args, kwargs, job_depends, self.serializer)
            job._files = [(d.path, d.relpath) for d in (file_depend(os.fspath(p)) for p in job_paths)]
        except (SerializationError, ValueError, TypeError) as exc:
            log.warning("job %s not submitted: %s", uid, exc)
            return None
        if len(job._payload) > self.max_payload - PAYLOAD_MARGIN:  # refused here, before anything is sent
            job.status, job.exception = JobStatus.Abandoned, (
                f"the job's arguments are {len(job._payload)} bytes, above max_payload ({self.max_payload} "
                f"bytes): pass large data as a file (dispy_job_depends, send_file) or raise max_payload on "
                f"both sides")
            log.warning("job %s not submitted: %s", uid, job.exception)
            job._finish()
            self._held.add(job)
            return job
        job._pinned = pinned
        job.submit_time = time.time()
        self._held.add(job)
        with self._lock:
            self._unfinished += 1
            self._jobs[uid] = job
            self._counts.submitted(job.submit_time)
            self._inbox.append(job)
            wake = len(self._inbox) == 1
        if wake:  # the loop has not been asked yet for these: once for all that come before it runs
            self._loop.call(self._take_inbox)
        return job

    def _take_inbox(self) -> None:
        with self._lock:
            jobs, self._inbox = self._inbox, []
        self._driver.submit_many(jobs)

    def wait(self, timeout: float | None = None, progress: bool = False) -> bool:
        """Wait until every submitted job is done; False if ``timeout`` passed first.

        ``progress`` (an extension): show a live bar of the jobs (done, failed, running, rate, ETA) on
        stderr while waiting, when stderr is a terminal (nothing otherwise)."""
        if progress:
            from dispy_core.client.progress import wait_with_progress

            return wait_with_progress(self, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._all_done:
            while self._unfinished > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._all_done.wait(remaining if remaining is not None else 1.0)
        return True

    def as_completed(self, jobs: Iterable[DispyJob] | None = None,
                     timeout: float | None = None) -> Iterator[DispyJob]:
        """Yield jobs as they reach their final status (whatever it is; those already done first), as
        ``concurrent.futures.as_completed`` does for futures: ``jobs`` None means every job submitted so far
        that the program still holds. TimeoutError if some are not done ``timeout`` seconds after the first
        ``next()``."""
        if jobs is None:
            chosen = sorted(self._held)
        else:
            chosen = list(jobs)
            for index, job in enumerate(chosen):
                if not isinstance(job, DispyJob):
                    raise TypeError(f"as_completed: jobs[{index}] is {job!r}, not a DispyJob (a submit that "
                                    f"returned None?)")
        by_future: dict[concurrent.futures.Future[Any], DispyJob] = {job.future: job for job in chosen}
        for future in concurrent.futures.as_completed(by_future, timeout):
            yield by_future[future]

    def cancel(self, job: DispyJob) -> int:
        """Remove a queued job or interrupt a running one: 0 if done so, -1 if the job is not active."""
        if job.status in FINAL_JOB_STATES or job._uid not in self._jobs:
            return -1
        return self._run(self._driver.cancel(job._uid), self.config.msg_timeout, default=-1)

    def _cancel_soon(self, job: DispyJob) -> None:
        """Cancel ``job`` without waiting (its future's ``cancel()``, which may run on any thread)."""
        if self._loop_alive() and job._uid in self._jobs:
            self._loop.submit(self._driver.cancel(job._uid))

    def close(self, timeout: float | None = None, terminate: bool = False) -> bool:
        """Wait for jobs (up to ``timeout``), cancel the rest if ``terminate``, then release the nodes.

        True if every job finished in time; False otherwise (then, without ``terminate``, the cluster
        stays open and ``close`` may be called again)."""
        if self._closed:
            return True
        done = self.wait(timeout)
        if not done and not terminate:
            return False
        self._closed = True
        try:
            self._loop.run(self._driver.shutdown(terminate=not done), timeout=self._life.shutdown_timeout() + 10)
        except TimeoutError:
            log.warning("closing cluster %s: the nodes were not all released within %g s", self.name,
                        self._life.shutdown_timeout() + 10)
        except (DispyError, OSError) as exc:
            log.warning("closing cluster %s: %s", self.name, exc)
        self._loop.stop()
        if self._callbacks is not None:
            self._callbacks.stop(timeout=2.0)
        if self._recover_log is not None:
            self._recover_log.close(remove=True)  # every job has its final status: nothing to recover
        return done

    def __enter__(self) -> JobCluster:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(terminate=exc_type is not None, timeout=0 if exc_type is not None else None)

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._loop.stop(timeout=0)
        except Exception:
            pass

    # ================================================================== public API: nodes
    def discover_nodes(self, nodes: Any) -> int:
        """Contact the given hosts (names, addresses, NodeAllocate...) and set up those that match the
        cluster's nodes; waits until each was tried and returns how many are now usable.

        Wildcards (``'*'``, ``'10.0.1.*'``) ping the nodes by broadcast (or multicast) and use those that
        answer and match."""
        entries = parse_nodes(nodes, self.node_port)
        conns = self._run(self._find(entries), self._op_timeout(), default=[])
        return sum(1 for conn in conns if conn.state == READY)

    async def _find(self, entries: list[NodeEntry]) -> list[Any]:
        named, found = await asyncio.gather(self._life.discover(entries), self._life.search(entries))
        return [*named, *found]

    def allocate_node(self, node: Any) -> int:
        """Use ``node`` (name, address, DispyNode, NodeAllocate or wildcard) for this cluster: 0 if it is
        (or, for a wildcard, will be) used, -1 if it could not be set up."""
        return self._run(self._ops.allocate(node), self._op_timeout(), default=-1)

    def deallocate_node(self, node: Any) -> int:
        """Send no new jobs to ``node``; its running jobs finish and its setup stays (allocate_node resumes)."""
        return self._call(self._ops.deallocate, node, default=-1)

    def close_node(self, node: Any, terminate: bool = False) -> int:
        """Release ``node``: no new jobs; once its running jobs finish (or are terminated), it runs
        ``cleanup`` and removes the files. Returns 0 at once; ``cluster_status`` gets ``DispyNode.Closed``."""
        return self._call(self._ops.close, node, terminate, default=-1)

    def resetup_node(self, node: Any) -> int:
        """Close the computation on ``node`` without releasing it, call ``allocate`` again (new
        ``setup_args``/``depends``) and set it up again. Returns 0 at once; ``Initialized`` follows."""
        return self._call(self._ops.resetup, node, default=-1)

    def node_jobs(self, node: Any) -> list[DispyJob]:
        """The jobs running on ``node`` now."""
        return self._call(self._ops.jobs, node, default=[])

    def set_node_cpus(self, node: Any, cpus: int) -> int:
        """Use ``cpus`` CPUs of ``node`` (0: all it granted; negative: all but that many): the CPUs now
        used, or -1 if the node is not usable or the number leaves none."""
        return self._call(self._ops.set_cpus, node, cpus, default=-1)

    def send_file(self, path: Any, node: Any) -> int:
        """Send a file into the computation's directory on ``node``, keeping its relative directory
        (see ``send_file_depend``): 0 on success, -1 (with the reason logged) otherwise."""
        try:
            dep = send_file_depend(path)
        except (ValueError, OSError) as exc:
            log.error("send_file(%r): %s", path, exc)
            return -1
        timeout = 6 * self.config.msg_timeout + dep.size / (1 << 20)
        return self._run(self._life.send_file_to(node, dep), timeout, default=-1)

    def status(self) -> dict[str, Any]:
        """A snapshot: usable ``nodes`` (DispyNode), ``failed_nodes`` (address -> reason), job counts."""
        discovering = not self._discovered.is_set()  # before the snapshot: "done" then covers every node
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.status == JobStatus.Created)
            running = sum(1 for j in self._jobs.values() if j.status == JobStatus.Running)
            unfinished = self._unfinished
        nodes, failed = self._call(self._ops.snapshot, default=None) or self._ops.snapshot()
        return {"name": self.name, "nodes": nodes, "failed_nodes": failed, "pending": pending,
                "running": running, "unfinished": unfinished, "discovering": discovering}

    def print_status(self) -> None:
        print(self.format_status())

    def format_status(self) -> str:
        """The table ``print_status`` prints: per node CPUs, jobs, times and bytes sent / received."""
        records = self._call(self._ops.records, default=None) or list(self._life.records.values())
        with self._lock:
            rate = self._counts.rate()
        return status_table(records, self._start_time, rate)

    # ------------------------------------------------------------------ crossing into the loop thread
    def _loop_alive(self) -> bool:
        loop = self._loop.loop
        return loop.is_running() and not loop.is_closed()

    def _call(self, fn: Callable[..., T], *args: Any, default: T) -> T:
        """``fn(*args)`` run on the loop thread (``default`` once the cluster's loop has ended)."""
        if self._loop.in_loop:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return self._run(call(), self.config.msg_timeout, default)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None, default: T) -> T:
        if not self._loop_alive():
            coro.close()
            return default
        if self._loop.in_loop:  # a hook or allocate() calling back in: waiting here would deadlock
            coro.close()
            raise RuntimeError("this cluster method cannot be called from the cluster's own loop thread")
        try:
            return self._loop.run(coro, timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            log.warning("cluster %s: %s did not complete: %s", self.name, getattr(coro, "__name__", coro),
                        exc or type(exc).__name__)
            return default

    def _op_timeout(self) -> float:
        return self.setup_timeout + 4 * self.config.msg_timeout

    # ================================================================== loop side
    async def _discover_initial(self) -> None:
        self._driver.spawn(self._driver.tick())
        await self._find(self._entries)
        self._discovered.set()
        self._driver.feed(ev.DiscoveryDone())
        if not any(c.state == READY for c in self._life.nodes.values()):
            failed = "; ".join(f"{k}: {r}" for k, r in self._life.failed.items()) or "none answered"
            retried = bool(self._life.reconnect.waiting)
            log.error("cluster %s has no usable node (%s); %s", self.name, failed,
                      "trying them again, and jobs wait" if retried else "jobs wait until a node is added")
            self._life.tick(time.time())

    def _computation_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.pulse_interval:
            options["pulse_interval"] = self.pulse_interval
        if self._pkg.source_complete:
            options["source_complete"] = True
        if self._pkg.source_modules:
            options["source_modules"] = self._pkg.source_modules
        if self.jobs_per_process > 1:
            options["jobs_per_process"] = self.jobs_per_process
        if self.deep_pipeline > PIPELINE:  # the node lets that many wait per CPU (see ClusterState "Capacity")
            options["queue_per_cpu"] = self.deep_pipeline - 1
        if self.job_limits:
            options["job_limits"] = dict(self.job_limits)
        if self._recover_log is not None:
            options["recover"] = True  # the node keeps results until acknowledged, and after we are gone
        return options

    # ------------------------------------------------------------------ the driver's calls back
    def _job_done(self, job: DispyJob) -> None:
        """A job reached its final status (its waiters wake; ``wait()`` counts it)."""
        job._finish()
        with self._all_done:
            if self._jobs.pop(job._uid, None) is not None:
                self._unfinished -= 1
                self._counts.finished(job.status == JobStatus.Finished and not job.exception, job.end_time)
            if self._unfinished == 0:
                self._all_done.notify_all()

    def _notify_cluster(self, status: int, node: DispyNode, job: DispyJob | None) -> None:
        if self._callbacks is not None and self.cluster_status is not None:
            self._callbacks.post(self.cluster_status, status, node, job)


def _public_config() -> Any:
    """``dispy.config`` (imported late: ``dispy`` imports this module)."""
    try:
        import dispy.config as public_config

        return public_config
    except ImportError:
        return None
