"""dispy.httpd.DispyHTTPServer against a real dispynode: every JSON endpoint, /metrics, and the security rules
(loopback by default, token when exposed, CSRF on every action, TLS, no secret in any page)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy.httpd import DispyHTTPServer
from dispy_core.testing.certs import make_self_signed
from dispy_core.testing.nodes import NodeProcess, start_node
from dispy_core.testing.waiting import wait_for

SECRET = "monitor-test-cluster-secret"


def compute(seconds: float, label: str = "") -> float:
    import time

    time.sleep(seconds)
    return seconds


class Browserless:
    """A tiny HTTP client that keeps the monitor's session cookie, as a browser would."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        self.port, self.context, self.cookie = port, context, ""

    def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = (http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
                if self.context else http.client.HTTPConnection("127.0.0.1", self.port, timeout=30))
        body = urllib.parse.urlencode(params or {}, doseq=True).encode() if method == "POST" else None
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if self.cookie:
            all_headers["Cookie"] = self.cookie
        try:
            conn.request(method, path, body=body, headers=all_headers)
            reply = conn.getresponse()
            data, reply_headers = reply.read(), {k.lower(): v for k, v in reply.getheaders()}
        finally:
            conn.close()
        if "set-cookie" in reply_headers:
            self.cookie = reply_headers["set-cookie"].split(";", 1)[0]
        return reply.status, reply_headers, data

    def json(self, path: str) -> Any:
        status, _, data = self.request("GET", path)
        assert status == 200, (path, status, data)
        return json.loads(data)

    def json_or_none(self, path: str) -> Any:
        """The answer, or None while it is not 200 (a node not set up yet is 404)."""
        status, _, data = self.request("GET", path)
        return json.loads(data) if status == 200 else None

    def post(self, path: str, params: dict[str, Any]) -> Any:
        csrf = self.json("/session")["csrf"]
        status, _, data = self.request("POST", path, params, {"X-CSRF-Token": csrf})
        assert status == 200, (path, status, data)
        return json.loads(data)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = start_node(["-c", "2"], secret=SECRET, prefix=tmp_path_factory.mktemp("monitor-node"))
    yield started
    started.stop()


def new_cluster(node: NodeProcess, **kwargs: Any) -> dispy.JobCluster:
    return dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=node.base_port, secret=SECRET,
                            pulse_interval=1, **kwargs)


def test_json_endpoints_follow_the_cluster(node: NodeProcess) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def cluster_status(status: int, node_: Any, job: Any) -> None:  # the program's own callback
        with lock:
            seen.append(status)

    cluster = new_cluster(node, cluster_status=cluster_status)
    monitor = DispyHTTPServer(cluster, port=0, poll_sec=1)
    client = Browserless(monitor.web.port)
    try:
        assert monitor.url.startswith("http://127.0.0.1:")  # host '' is loopback here
        quick = [cluster.submit(0.05, label=f"quick{i}") for i in range(3)]
        assert all(job is not None and job(timeout=30) == 0.05 for job in quick)
        long_job = cluster.submit(30, label="the-long-one")
        assert long_job is not None
        status = wait_for(lambda: (s := client.json("/cluster_status"))["clusters"][0]["jobs"]["running"] == 1 and s)
        summary = status["clusters"][0]
        assert summary["name"] == "compute" and summary["nodes"] == 1 and summary["cpus"] == 2
        assert summary["jobs"] | {"ended": None} == {"submitted": 4, "done": 3, "failed": 0, "cancelled": 0,
                                                     "running": 1, "pending": 0, "ended": None}
        nodes = wait_for(lambda: [n for n in client.json("/nodes")["clusters"][0]["nodes"] if n["avail"]])
        key = nodes[0]["key"]
        assert key == f"127.0.0.1:{node.port}" and nodes[0]["cpus"] == 2 and nodes[0]["jobs_done"] == 3
        assert nodes[0]["tx"] > 0 and nodes[0]["rx"] > 0 and nodes[0]["avail"]["memory"] > 0
        updates = client.json("/cluster_updates?since=0")["clusters"][0]
        assert [n["key"] for n in updates["updated_nodes"]] == [key]
        assert client.json("/cluster_updates?since=9999999999")["clusters"][0]["updated_nodes"] == []
        throughput = client.json("/throughput")
        assert sum(throughput["clusters"][0]["nodes"][key]) == 3 and throughput["buckets"] == 60

        info = client.json(f"/node_info?node={key}")
        assert [(j["id"], j["args"], j["kwargs"]) for j in info["jobs"]] == [
            (str(long_job.id), "30", "label='the-long-one'")]
        assert client.post("/set_cpus", {"node": key, "cpus": 1})["cpus"] == {"1": 1}
        assert client.post("/set_cpus", {"node": key, "cpus": 0})["cpus"] == {"1": 2}
        assert client.post("/deallocate_node", {"node": key})["results"] == {"1": 0}
        assert client.post("/allocate_node", {"node": key})["results"] == {"1": 0}
        assert client.post("/update", {"poll_sec": 3}) == {"poll_sec": 3.0}
        assert client.json("/session")["poll_sec"] == 3.0

        reply = client.post("/cancel_jobs", {"job": [info["jobs"][0]["job"], "1:999999"]})
        assert reply == {"cancelled": [info["jobs"][0]["job"]], "not_cancelled": ["1:999999"]}
        assert long_job.wait(30) and long_job.status in (dispy.DispyJob.Cancelled, dispy.DispyJob.Terminated)
        wait_for(lambda: client.json("/cluster_status")["clusters"][0]["jobs"]["cancelled"] == 1)
        assert client.json(f"/node_info?node={key}")["jobs"] == []
        assert client.request("GET", "/node_info?node=10.9.9.9")[0] == 404
        with lock:
            assert dispy.DispyJob.Finished in seen  # the program's cluster_status still ran
    finally:
        monitor.shutdown(wait=False)
        cluster.close(timeout=10, terminate=True)


def test_metrics_in_the_exposition_format(node: NodeProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cluster = new_cluster(node)
    monitor = DispyHTTPServer(cluster, port=0, poll_sec=1, show_job_args=False)
    client = Browserless(monitor.web.port)
    try:
        jobs = [cluster.submit(0.05) for _ in range(4)]
        assert all(job is not None and job(timeout=30) == 0.05 for job in jobs)
        running = cluster.submit(30)
        wait_for(lambda: client.json("/cluster_status")["clusters"][0]["jobs"]["running"] == 1)
        info = wait_for(lambda: client.json_or_none(f"/node_info?node=127.0.0.1:{node.port}"))
        assert "args" not in info["jobs"][0] and info["show_job_args"] is False
        status, headers, body = client.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode()) for s in family.samples}
        nodes = client.json("/nodes")["clusters"][0]["nodes"]
        labels = (("cid", "1"), ("cluster", "compute"))
        node_labels = tuple(sorted(labels + (("node", nodes[0]["key"]),)))
        assert samples[("dispy_jobs_submitted_total", labels)] == 5
        assert samples[("dispy_jobs_ended_total", tuple(sorted(labels + (("status", "Finished"),))))] == 4
        assert samples[("dispy_jobs", tuple(sorted(labels + (("state", "running"),))))] == 1
        assert samples[("dispy_jobs", tuple(sorted(labels + (("state", "pending"),))))] == 0
        assert samples[("dispy_node_cpus", node_labels)] == 2
        assert samples[("dispy_node_cpus_busy", node_labels)] == 1
        assert samples[("dispy_node_sent_bytes_total", node_labels)] > 0
        assert samples[("dispy_node_received_bytes_total", node_labels)] > 0
        assert samples[("dispy_node_jobs_done_total", node_labels)] == 4
        assert cluster.cancel(running) == 0
    finally:
        monitor.shutdown(wait=False)
        cluster.close(timeout=10, terminate=True)


def every_page_and_answer(client: Browserless, key: str) -> list[bytes]:
    paths = ["/", "/monitor.html", "/node.html", "/common.js", "/monitor.js", "/node.js", "/monitor.css",
             "/session", "/cluster_status", "/cluster_updates", "/nodes", f"/node_info?node={key}", "/throughput",
             "/metrics"]
    bodies = []
    for path in paths:
        status, headers, body = client.request("GET", path)
        assert status == 200, (path, status, body)
        bodies.append(body + json.dumps(headers).encode())
    return bodies


def test_exposed_monitor_needs_its_token_and_shows_no_secret(node: NodeProcess,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    cluster = new_cluster(node)
    monitor = DispyHTTPServer(cluster, host="0.0.0.0", port=0, poll_sec=1)  # exposed: a token is needed
    try:
        printed = capfd.readouterr().err
        match = re.search(r"open (http://\S+)/\?token=(\S+)", printed)
        assert match, printed
        token = match.group(2)
        stranger = Browserless(monitor.web.port)
        for path in ("/", "/nodes", "/metrics", "/session", f"/?token={token[:-1]}x"):
            assert stranger.request("GET", path)[0] == 401, path
        assert stranger.request("POST", "/cancel_jobs", {"job": "1:1"})[0] == 401
        assert stranger.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})[0] == 200

        client = Browserless(monitor.web.port)
        status, headers, _ = client.request("GET", f"/?token={token}")
        assert status == 303 and headers["location"] == "/" and client.cookie
        job = cluster.submit(30)
        assert job is not None
        key = f"127.0.0.1:{node.port}"
        wait_for(lambda: (client.json_or_none(f"/node_info?node={key}") or {}).get("jobs"))
        # CSRF: an action needs POST and the session's token
        assert client.request("GET", "/cancel_jobs?job=1:1")[0] == 405
        assert client.request("POST", "/cancel_jobs", {"job": f"1:{job._uid}"})[0] == 403
        assert client.request("POST", "/cancel_jobs", {"job": f"1:{job._uid}"},
                              {"X-CSRF-Token": "f" * 64})[0] == 403
        assert job.status != dispy.DispyJob.Cancelled
        session_id = client.cookie.split("=", 1)[1]
        for body in every_page_and_answer(client, key):
            for secret in (token, SECRET, session_id):
                assert secret.encode() not in body
        assert client.post("/cancel_jobs", {"job": f"1:{job._uid}"})["cancelled"] == [f"1:{job._uid}"]
        assert job.wait(30)
    finally:
        monitor.shutdown(wait=False)
        cluster.close(timeout=10, terminate=True)


def test_monitor_over_tls(node: NodeProcess, tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed(tmp_path)
    cluster = new_cluster(node)
    monitor = DispyHTTPServer(cluster, port=0, poll_sec=1, certfile=str(certfile), keyfile=str(keyfile))
    try:
        assert monitor.url.startswith("https://127.0.0.1:")
        client = Browserless(monitor.web.port, ssl.create_default_context(cafile=str(certfile)))
        job = cluster.submit(0.05)
        assert job is not None and job(timeout=30) == 0.05
        wait_for(lambda: client.json("/cluster_status")["clusters"][0]["jobs"]["done"] == 1)
        _, headers, _ = client.request("GET", "/")
        assert "Secure" in headers["set-cookie"]
        with pytest.raises(ssl.SSLError):
            Browserless(monitor.web.port, ssl.create_default_context()).request("GET", "/")  # not trusted
    finally:
        monitor.shutdown(wait=False)
        cluster.close(timeout=10)
