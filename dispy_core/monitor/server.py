"""``DispyHTTPServer``: the web monitor of a client program's clusters (and of ``dispyscheduler --httpd``).

Pages (``static/``): ``monitor.html`` (overview, nodes table, throughput plot; polls the JSON below every
``poll_sec`` seconds, no reload) and ``node.html`` (one node: its running jobs, their arguments when
``show_job_args``, a cancel button each). Every figure a page shows comes from these endpoints:

========================  ======  ====================================================================
``/cluster_status``       GET     per cluster: nodes, CPUs, busy, jobs submitted/done/failed/cancelled/
                                  running/pending
``/cluster_updates``      GET     the same, with only the nodes updated since ``since`` (seconds)
``/nodes``                GET     per cluster, every node: CPUs, busy, jobs, seconds per job, bytes, the
                                  last pulse's availability (CPU %, memory, swap %, disk)
``/node_info``            GET     ``node`` (addr:port, address or name): the node, and its running jobs
``/throughput``           GET     jobs finished per node in each ``step`` over the last ``buckets`` steps
``/metrics``              GET     Prometheus exposition (``metrics.py``)
``/cancel_jobs``          POST    ``job`` ("cid:uid", repeatable)
``/set_cpus``             POST    ``node``, ``cpus`` [, ``cid``]
``/allocate_node``        POST    ``node`` [, ``cid``]   (also ``/deallocate_node``, ``/close_node``
                                  [``terminate``])
``/add_node``             POST    ``host`` [, ``port``, ``cpus``, ``cid``]
``/update``               POST    ``poll_sec``: how often the pages poll
========================  ======  ====================================================================

Without ``cid`` an action applies to every cluster that has the node. Security is ``web.py``'s: loopback by
default, a token when exposed, CSRF on every POST, TLS with ``certfile``/``keyfile``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from dispy_core.monitor import metrics
from dispy_core.monitor.clusters import ClusterWatch
from dispy_core.monitor.web import HTTPError, Request, Response, WebServer, json_response

log = logging.getLogger("dispy.httpd")

__all__ = ["DispyHTTPServer", "Watch"]

STATIC = Path(__file__).with_name("static")
THROUGHPUT_BUCKETS = 60


class Watch(Protocol):
    """What the server needs of a watched cluster (``clusters.ClusterWatch``, ``scheduler.ComputationWatch``)."""

    cid: int
    name: str

    def counts(self) -> dict[str, Any]: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def node_jobs(self, node_key: str) -> list[dict[str, Any]]: ...
    def cancel(self, uid: int) -> bool: ...
    def throughput(self, start: float, step: float, buckets: int) -> dict[str, list[int]]: ...
    def set_cpus(self, node: str, cpus: int) -> int: ...
    def allocate_node(self, node: Any) -> int: ...
    def deallocate_node(self, node: str) -> int: ...
    def close_node(self, node: str, terminate: bool = False) -> int: ...
    def add_node(self, host: str, port: int | None, cpus: int) -> int: ...
    def detach(self) -> None: ...


class DispyHTTPServer:
    """Serve the web monitor for ``cluster`` (and clusters added later) at ``host:port``.

    ``host=''`` (the default) means loopback (127.0.0.1) here, not every address as in the original: pass an
    address to expose the monitor, and then open it with the URL (carrying an access token) printed once on
    stderr, or give ``token=`` (a password, at least 8 characters; also ``$DISPY_HTTPD_TOKEN``). ``poll_sec``:
    seconds between the pages' updates (at least 1). ``DocumentRoot``: a directory of pages to serve instead of
    the built-in ones. ``keyfile``/``certfile``: serve HTTPS. ``show_job_args``: show jobs' arguments on the
    node page. The cluster's own ``cluster_status`` callback still runs: the monitor listens through the core's
    notification hooks.
    """

    def __init__(self, cluster: Any, host: str = "", port: int = 8181, poll_sec: float = 10,
                 DocumentRoot: str | None = None, keyfile: str | None = None, certfile: str | None = None,
                 show_job_args: bool = True, token: str | None = None) -> None:
        if isinstance(poll_sec, bool) or not isinstance(poll_sec, int | float):
            raise ValueError(f"poll_sec must be a number of seconds, not {poll_sec!r}")
        if poll_sec < 1:
            log.warning("poll_sec %s is below 1 s; using 1", poll_sec)
        self.poll_sec = max(1.0, float(poll_sec))
        self.show_job_args = bool(show_job_args)
        self._lock = threading.Lock()
        self._watches: dict[int, Watch] = {}
        self._next_cid = 1
        self._started = time.time()
        self.web = WebServer(host, port, token=token or os.environ.get("DISPY_HTTPD_TOKEN") or None,
                             certfile=certfile, keyfile=keyfile, name="dispy monitor")
        self.web.static(DocumentRoot or STATIC, index="monitor.html")
        self._routes()
        if cluster is not None:
            self.add_cluster(cluster)
        self.web.start()

    # ------------------------------------------------------------------ the original's API
    def add_cluster(self, cluster: Any) -> None:
        """Monitor ``cluster`` too (a JobCluster or SharedJobCluster)."""
        with self._lock:
            if any(getattr(w, "cluster", None) is cluster for w in self._watches.values()):
                return
            cid = self._new_cid()
            self._watches[cid] = ClusterWatch(cid, cluster, self.show_job_args)

    def del_cluster(self, cluster: Any) -> None:
        """Stop monitoring ``cluster``."""
        with self._lock:
            for cid, watch in list(self._watches.items()):
                if getattr(watch, "cluster", None) is cluster:
                    del self._watches[cid]
                    watch.detach()

    def shutdown(self, wait: bool = True) -> None:
        """Stop serving. ``wait``: for the original, let the pages see the final state first (one poll)."""
        if wait and self._watches:
            time.sleep(min(self.poll_sec, 2.0))
        self.web.shutdown(wait=wait)
        with self._lock:
            for watch in self._watches.values():
                watch.detach()
            self._watches.clear()

    @property
    def url(self) -> str:
        return self.web.url

    # ------------------------------------------------------------------ for dispyscheduler
    def add_watch(self, make: Any) -> int:
        """Add a watch built by ``make(cid)``; its number."""
        with self._lock:
            cid = self._new_cid()
            self._watches[cid] = make(cid)
            return cid

    def remove_watch(self, cid: int) -> None:
        with self._lock:
            watch = self._watches.pop(cid, None)
        if watch is not None:
            watch.detach()

    def _new_cid(self) -> int:
        cid, self._next_cid = self._next_cid, self._next_cid + 1
        return cid

    def _watch_list(self, request: Request | None = None) -> list[Watch]:
        with self._lock:
            watches = list(self._watches.values())
        cid = request.param("cid") if request is not None else None
        if cid not in (None, ""):
            watches = [w for w in watches if str(w.cid) == str(cid)]
            if not watches:
                raise HTTPError(404, f"no cluster {cid!r} on this monitor")
        return watches

    # ------------------------------------------------------------------ routes
    def _routes(self) -> None:
        web = self.web
        web.settings.update(poll_sec=self.poll_sec, show_job_args=self.show_job_args)
        for path, handler in (("/cluster_status", self._cluster_status), ("/cluster_updates", self._cluster_updates),
                              ("/nodes", self._nodes), ("/node_info", self._node_info),
                              ("/throughput", self._throughput), ("/metrics", self._metrics)):
            web.get(path, handler)
        for path, handler in (("/cancel_jobs", self._cancel_jobs), ("/set_cpus", self._set_cpus),
                              ("/allocate_node", self._node_action("allocate_node")),
                              ("/deallocate_node", self._node_action("deallocate_node")),
                              ("/close_node", self._node_action("close_node")),
                              ("/add_node", self._add_node), ("/update", self._update)):
            web.post(path, handler)

    def _summary(self, watch: Watch, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        usable = [n for n in nodes if n["status"] == "usable"]
        return {"cid": watch.cid, "name": watch.name, "nodes": len(usable), "cpus": sum(n["cpus"] for n in usable),
                "busy": sum(n["busy"] for n in usable), "jobs": watch.counts()}

    def _cluster_status(self, request: Request) -> Response:
        clusters = [self._summary(w, w.nodes()) for w in self._watch_list(request)]
        return json_response({"time": time.time(), "poll_sec": self.poll_sec, "clusters": clusters})

    def _cluster_updates(self, request: Request) -> Response:
        try:
            since = float(request.param("since", 0) or 0)
        except ValueError:
            raise HTTPError(400, "since must be a time in seconds") from None
        now = time.time()
        clusters = []
        for watch in self._watch_list(request):
            nodes = watch.nodes()
            summary = self._summary(watch, nodes)
            summary["updated_nodes"] = [n for n in nodes if n["update_time"] >= since]
            clusters.append(summary)
        return json_response({"time": now, "poll_sec": self.poll_sec, "clusters": clusters})

    def _nodes(self, request: Request) -> Response:
        clusters = [{"cid": w.cid, "name": w.name, "nodes": w.nodes()} for w in self._watch_list(request)]
        return json_response({"time": time.time(), "clusters": clusters})

    def _node_info(self, request: Request) -> Response:
        wanted = str(request.required("node"))
        found: list[dict[str, Any]] = []
        jobs: list[dict[str, Any]] = []
        for watch in self._watch_list(request):
            for node in watch.nodes():
                if wanted in (node["key"], node["ip_addr"], node["name"]):
                    found.append({"cid": watch.cid, "cluster": watch.name, **node})
                    jobs.extend({"cid": watch.cid, "cluster": watch.name, **job}
                                for job in watch.node_jobs(node["key"]))
        if not found:
            raise HTTPError(404, f"no node {wanted!r} in the monitored clusters")
        return json_response({"node": found[0]["key"], "clusters": found, "jobs": jobs,
                              "show_job_args": self.show_job_args})

    def _throughput(self, request: Request) -> Response:
        step = self.poll_sec
        buckets = THROUGHPUT_BUCKETS
        now = time.time()
        start = (now // step + 1) * step - step * buckets  # buckets end with the current step
        clusters = [{"cid": w.cid, "name": w.name, "nodes": w.throughput(start, step, buckets)}
                    for w in self._watch_list(request)]
        return json_response({"start": start, "step": step, "buckets": buckets, "time": now, "clusters": clusters})

    def _metrics(self, request: Request) -> Response:
        rows = [(w.cid, w.name, w.counts(), w.nodes()) for w in self._watch_list(request)]
        return Response(metrics.render(rows).encode(), 200, metrics.CONTENT_TYPE)

    # ------------------------------------------------------------------ actions
    def _cancel_jobs(self, request: Request) -> Response:
        names = request.params.get("job") or []
        if not names:
            raise HTTPError(400, "give the jobs to cancel as job=cid:uid")
        watches = {w.cid: w for w in self._watch_list()}
        cancelled: list[str] = []
        refused: list[str] = []
        for name in names:
            try:
                cid, uid = (int(part) for part in str(name).split(":", 1))
            except ValueError:
                raise HTTPError(400, f"a job is named cid:uid, not {name!r}") from None
            watch = watches.get(cid)
            (cancelled if watch is not None and watch.cancel(uid) else refused).append(str(name))
        if cancelled:
            log.info("monitor: cancelled %d job(s) at the request of %s", len(cancelled), request.client)
        return json_response({"cancelled": cancelled, "not_cancelled": refused})

    def _set_cpus(self, request: Request) -> Response:
        node = str(request.required("node"))
        cpus = request.int_param("cpus")
        return json_response({"node": node, "cpus": {str(w.cid): w.set_cpus(node, cpus)
                                                      for w in self._watch_list(request)}})

    def _node_action(self, action: str) -> Any:
        def handler(request: Request) -> Response:
            node = str(request.required("node"))
            results = {}
            for watch in self._watch_list(request):
                if action == "close_node":
                    results[str(watch.cid)] = watch.close_node(node, str(request.param("terminate", "")).lower()
                                                             in ("1", "true", "yes"))
                else:
                    results[str(watch.cid)] = getattr(watch, action)(node)
            return json_response({"node": node, "action": action, "results": results})
        return handler

    def _add_node(self, request: Request) -> Response:
        host = str(request.required("host"))
        port = request.int_param("port") if request.param("port") not in (None, "") else None
        cpus = request.int_param("cpus", 0)
        try:
            results = {str(w.cid): w.add_node(host, port, cpus) for w in self._watch_list(request)}
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        return json_response({"host": host, "results": results})

    def _update(self, request: Request) -> Response:
        poll_sec = request.int_param("poll_sec")
        if not 1 <= poll_sec <= 3600:
            raise HTTPError(400, "poll_sec must be between 1 and 3600 seconds")
        self.poll_sec = float(poll_sec)
        self.web.settings["poll_sec"] = self.poll_sec
        return json_response({"poll_sec": self.poll_sec})
