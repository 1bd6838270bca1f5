"""dispynode's options against real node processes: --serve, --client_shutdown, --zombie_interval,
--init, the service window, --config/--save_config, --force_cleanup, --max_file_size, old options."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.channel import Channel
from dispy_core.client.computation import package
from dispy_core.config import Config
from dispy_core.node.server import NodeOptions, NodeServer
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]


def double(x: int) -> int:
    return x * 2


def cluster_for(node: NodeProcess, computation: Any, **kwargs: Any) -> dispy.JobCluster:
    kwargs.setdefault("nodes", [node.host])
    return dispy.JobCluster(computation, dispy_port=node.base_port, **kwargs)


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# --------------------------------------------------------------------------- a raw client
class RawClient:
    """A client speaking the wire protocol directly: it can fall silent, which JobCluster cannot."""

    def __init__(self, channel: Channel, serializer: Any, answer_pings: bool) -> None:
        self.channel = channel
        self.serializer = serializer
        self.answer_pings = answer_pings
        self.received: list[m.Message] = []
        self.task = asyncio.ensure_future(channel.run(self._on_message))

    @classmethod
    async def connect(cls, node: NodeProcess, answer_pings: bool = False) -> RawClient:
        plugins = DispyPluginManager(Config(role="client"))
        serializer = plugins.make_serializer()
        channel = await Channel.connect(plugins.make_transport("tcp"), node.host, node.port, secret="",
                                        serializers={serializer.name: serializer}, serializer=serializer.name,
                                        timeout=10)
        return cls(channel, serializer, answer_pings)

    def _on_message(self, msg: m.Message) -> None:
        self.received.append(msg)
        if isinstance(msg, m.Ping) and self.answer_pings:
            asyncio.ensure_future(self.channel.send(m.Pong(msg.req_id)))

    async def open(self, comp_id: str) -> None:
        pkg = package(double, [], None, True, self.serializer)
        ch = self.channel
        computation = dataclasses.replace(pkg.computation, comp_id=comp_id)
        reply = await ch.request(m.ComputationOpen(req_id=ch.next_req_id(), **computation.fields()), 10)
        assert isinstance(reply, m.ComputationReady) and reply.ok, reply
        reply = await ch.request(m.ComputationSetup(ch.next_req_id(), comp_id), 30)
        assert isinstance(reply, m.ComputationReady) and reply.ok, reply


# --------------------------------------------------------------------------- --serve
def test_serve_n_exits_cleanly_after_the_nth_computation(node_factory: Factory) -> None:
    node = node_factory("--serve", "2")
    for i in range(2):
        with cluster_for(node, double) as cluster:
            job = cluster.submit(i)
            assert job is not None and job() == 2 * i
        if i == 0:
            time.sleep(0.3)
            assert node.proc.poll() is None, "the node quit after the first of two computations"
    assert node.wait_exit(20) == 0
    assert "served 2 computations" in node.log()


# --------------------------------------------------------------------------- --client_shutdown
def shutdown_in_cleanup() -> None:
    dispynode_shutdown()  # type: ignore[name-defined] # noqa: F821


def shutdown_in_job(x: int) -> int:
    dispynode_shutdown()  # type: ignore[name-defined] # noqa: F821
    time.sleep(0.3)  # the node waits for this job before it quits
    return x + 1


def test_cleanup_calling_dispynode_shutdown_stops_a_client_shutdown_node(node_factory: Factory) -> None:
    node = node_factory("--client_shutdown")
    with cluster_for(node, double, cleanup=shutdown_in_cleanup) as cluster:
        job = cluster.submit(4)
        assert job is not None and job() == 8
    assert node.wait_exit(20) == 0
    assert "called dispynode_shutdown()" in node.log()


def test_job_calling_dispynode_shutdown_gets_its_result_first(node_factory: Factory) -> None:
    node = node_factory("--client_shutdown")
    cluster = cluster_for(node, shutdown_in_job)
    try:
        job = cluster.submit(4)
        assert job is not None and job() == 5 and job.status == dispy.DispyJob.Finished
        assert node.wait_exit(20) == 0
    finally:
        cluster.close(timeout=5, terminate=True)


def test_dispynode_shutdown_is_refused_without_client_shutdown(node_factory: Factory) -> None:
    node = node_factory()
    with cluster_for(node, double, cleanup=shutdown_in_cleanup) as cluster:
        job = cluster.submit(1)
        assert job is not None and job() == 2
    node.wait_log("not started with --client_shutdown; ignored")
    time.sleep(0.3)
    assert node.proc.poll() is None


# --------------------------------------------------------------------------- --zombie_interval
def test_silent_client_is_presumed_dead_and_its_computation_closed(node_factory: Factory) -> None:
    node = node_factory("--zombie_interval", "0.02")  # 1.2 s

    async def scenario() -> tuple[RawClient, RawClient]:
        silent = await RawClient.connect(node)
        alive = await RawClient.connect(node, answer_pings=True)
        await silent.open("silent-1")
        await alive.open("alive-1")
        assert (node.prefix / "silent-1").is_dir()
        await asyncio.wait_for(asyncio.shield(silent.task), 10)  # the node closes the silent one
        await asyncio.sleep(0.5)
        return silent, alive

    silent, alive = asyncio.run(scenario())
    assert silent.channel.closed and any(isinstance(msg, m.Ping) for msg in silent.received)
    assert not (node.prefix / "silent-1").exists()
    assert "presumed dead; closing double" in node.log()
    assert (node.prefix / "alive-1").is_dir(), "a client answering pings must not be presumed dead"


# --------------------------------------------------------------------------- --init
INIT_FILE = """
import os
greeting = "unset"

def init():
    global greeting
    greeting = "hello from init " + str(os.getpid() > 0)

def close():
    with open({marker!r}, "a") as handle:
        handle.write("closed\\n")
"""


def uses_init_global(x: int) -> str:
    return f"{greeting} {x}"  # type: ignore[name-defined] # noqa: F821


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_init_file_globals_reach_jobs_and_close_runs(node_factory: Factory, tmp_path: Path, executor: str) -> None:
    marker = tmp_path / f"closed-{executor}.txt"
    init_file = tmp_path / "node_init.py"
    init_file.write_text(INIT_FILE.replace("{marker!r}", repr(str(marker))))
    node = node_factory("--init", str(init_file), "--executor", executor)
    with cluster_for(node, uses_init_global) as cluster:
        jobs = [cluster.submit(i) for i in range(3)]
        assert [job() for job in jobs if job is not None] == [f"hello from init True {i}" for i in range(3)]
    assert wait_for(marker.exists)
    assert marker.read_text() == "closed\n"  # once, for the one computation


def test_init_file_must_define_init(tmp_path: Path) -> None:
    bad = tmp_path / "no_init.py"
    bad.write_text("x = 1\n")
    proc = subprocess.run([sys.executable, "-m", "dispy_core.node.cli", "--daemon", "-i", "127.0.0.1",
                           "--init", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "defines no init()" in proc.stderr


# --------------------------------------------------------------------------- service window
def test_node_past_its_service_stop_refuses_jobs(node_factory: Factory) -> None:
    now = datetime.now()
    start, stop = (now - timedelta(minutes=2)).strftime("%H:%M"), (now - timedelta(minutes=1)).strftime("%H:%M")
    node = node_factory("--service_start", start, "--service_stop", stop, "--cpus", "1")

    async def scenario() -> tuple[m.Message, m.Message]:
        client = await RawClient.connect(node)
        info = await client.channel.request(m.NodeInfoRequest(client.channel.next_req_id()), 10)
        await client.open("window-1")
        args = client.serializer.dumps(((1,), {}))
        await client.channel.send(m.JobSubmit("window-1", 1, args))
        for _ in range(100):
            refusals = [msg for msg in client.received if isinstance(msg, m.JobRefused)]
            if refusals:
                break
            await asyncio.sleep(0.05)
        await client.channel.close()
        return info, refusals[0]

    info, refusal = asyncio.run(scenario())
    assert isinstance(info, m.NodeInfo) and info.cpus == 1 and info.avail_cpus == 0
    assert isinstance(refusal, m.JobRefused) and "service window" in refusal.reason


# --------------------------------------------------------------------------- --config / --save_config
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispy_core.node.cli", "--daemon", *args],
                          capture_output=True, text=True, timeout=60)


def test_save_config_omits_secrets_and_config_is_overridden_by_the_command_line(
        node_factory: Factory, tmp_path: Path) -> None:
    saved = tmp_path / "node.json"
    proc = run_cli("-i", "127.0.0.1", "--cpus", "1", "--name", "from-file", "--zombie_interval", "30",
                   "-s", "very-secret-1", "--admin_secret", "very-secret-2", "--save_config", str(saved))
    assert proc.returncode == 0, proc.stderr
    text = saved.read_text()
    assert "very-secret" not in text and "not saved" in text
    data = json.loads(text)
    assert data["cpus"] == 1 and data["name"] == "from-file" and data["zombie_interval"] == 30.0
    assert "secret" not in data and "admin_secret" not in data
    node = node_factory("--config", str(saved), "--name", "from-cli")
    assert "dispynode ready: from-cli with 1 CPUs" in node.log()
    assert "zombie" not in node.log()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"cpus": "abc"}', "invalid int value"),
    ('{"no_such_option": 1}', "unknown option"),
    ('{"daemon": "yes"}', "must be true or false"),
    ('["cpus", 1]', "JSON object"),
])
def test_bad_config_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    proc = run_cli("-i", "127.0.0.1", "--config", str(path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- --force_cleanup
def test_force_cleanup_removes_files_the_client_asked_to_keep(node_factory: Factory, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("keep me?")
    kept = node_factory()
    forced = node_factory("--force_cleanup")
    for node in (kept, forced):
        with cluster_for(node, double, depends=[str(data)], cleanup=False) as cluster:
            job = cluster.submit(1)
            assert job is not None and job() == 2
    assert list(kept.prefix.glob("*/data.txt")), "cleanup=False keeps the files on a normal node"
    assert wait_for(lambda: not list(forced.prefix.glob("*/data.txt")))


# --------------------------------------------------------------------------- --max_file_size
def send_files(sizes: list[int]) -> list[int]:
    codes = []
    for size in sizes:
        name = f"out-{size}.bin"
        with open(name, "wb") as handle:
            handle.write(b"x" * size)
        codes.append(dispy_send_file(name))  # type: ignore[name-defined] # noqa: F821
    return codes


def test_max_file_size_bounds_files_both_ways(node_factory: Factory, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files jobs send land in the client's working directory
    node = node_factory("--max_file_size", "1k")
    big = tmp_path / "big.dat"
    big.write_bytes(b"y" * 2048)
    refused = cluster_for(node, double, depends=[str(big)])
    try:
        node.wait_log("above this node's max_file_size")
    finally:
        refused.close(timeout=5, terminate=True)
    with cluster_for(node, send_files) as cluster:
        job = cluster.submit([100, 4096])
        assert job is not None and job() == [0, -1], (job.stderr, job.exception)
    assert (tmp_path / "out-100.bin").read_bytes() == b"x" * 100
    assert not (tmp_path / "out-4096.bin").exists()


def test_node_itself_bounds_files_from_jobs() -> None:
    """The node does not trust the job process to check: it drops oversized files before forwarding."""
    server = NodeServer(NodeOptions(host="127.0.0.1", max_file_size=10))
    forwarded: list[m.Message] = []
    server._send_to_owner = lambda comp_id, msg: forwarded.append(msg)  # type: ignore[method-assign]
    server.jobs.job_file("c1", 1, "small", b"x" * 10)
    server.jobs.job_file("c1", 2, "large", b"x" * 11)
    assert [msg.relpath for msg in forwarded if isinstance(msg, m.JobFile)] == ["small"]
    [told] = [msg for msg in forwarded if isinstance(msg, m.Error)]  # and the client is told why
    assert told.code == "file-refused" and "'large' of 11 bytes from job 2 not sent" in told.message


# --------------------------------------------------------------------------- old options
def test_old_options_are_accepted(node_factory: Factory) -> None:
    node = node_factory("--ext_host", "127.0.0.1", "--ipv4_udp_multicast", "--scheduler_host", "127.0.0.1",
                        "--ping_interval", "5", "--unsafe_setup", "--admin_secret", "adm1n-s3cret")
    log = node.wait_log("answering pings on UDP port")  # discovery (on loopback here), once it has started
    assert "not implemented" not in log
    assert "--unsafe_setup is accepted for compatibility" in log
    assert "adm1n-s3cret" not in log


@pytest.mark.parametrize(("args", "message"), [
    (["--ping_interval", "0"], "--ping_interval must be positive"),
    (["--zombie_interval", "-1"], "--zombie_interval must be >= 0"),
    (["--serve", "-2"], "--serve must be >= 0"),
    (["--service_start", "25:00"], "invalid time"),
    (["--service_start", "08:00", "--service_stop", "08:00"], "different times"),
    (["--service_stop", "18:00", "--service_end", "17:00"], "must come after --service_stop"),
    (["--init", "/nonexistent/init.py"], "cannot be read"),
    (["--ext_host", "a", "--ext_host", "b"], "paired with --host"),
])
def test_bad_values_exit_2(args: list[str], message: str) -> None:
    proc = run_cli("-i", "127.0.0.1", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_a_node_with_a_scheduler_serves_only_it(node_factory: Factory) -> None:
    node = node_factory("--scheduler_node", "127.0.0.2")  # announced to, and the only peer served
    assert "serves only its scheduler(s): 127.0.0.2" in node.log()
    cluster = dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)])
    try:
        assert wait_for(lambda: bool(cluster.status()["failed_nodes"]), timeout=20)
        [reason] = cluster.status()["failed_nodes"].values()
        assert "this node serves only its scheduler (127.0.0.2)" in reason, reason
    finally:
        cluster.close(timeout=0, terminate=True)
