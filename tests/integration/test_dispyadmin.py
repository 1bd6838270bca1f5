"""dispyadmin against real dispynode processes: every operation, each refusal, shutdown, and the program itself
(a bad option, SIGTERM, the secret kept out of its output and its page)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispy_core.admin.client import AdminClient, AdminError, NodeAddress
from dispy_core.channel import Channel
from dispy_core.config import load_config
from dispy_core.errors import AuthenticationError
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.testing.certs import make_self_signed
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]
ADMIN = "admin-secret-x7"
CLIENT = "client-secret-q2"
CPUS = os.cpu_count() or 1


def dispyadmin(*args: str, secret: str | None = ADMIN, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("DISPY_ADMIN_SECRET", None)
    if secret is not None:
        env["DISPY_ADMIN_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "dispy_core.admin.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def states(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def hhmm(minutes_from_now: int) -> str:
    when = datetime.datetime.now() + datetime.timedelta(minutes=minutes_from_now)
    return when.strftime("%H:%M")


def test_operations_change_the_node(node_factory: Factory) -> None:
    node = node_factory("--cpus", "1", "--admin_secret", ADMIN, secret=CLIENT, daemon=False)
    where = f"127.0.0.1:{node.port}"

    (info,) = states(dispyadmin("-n", where, "--info", "--json"))
    assert (info["node"], info["cpus"], info["max_cpus"], info["accepting"]) == (where, 1, CPUS, True)
    assert info["serve"] == 0 and info["clients"] == [] and info["service_start"] == ""

    # CPUs, a service window that is closed now (it opens in an hour), and serve 3: one command, in that order
    start, stop = hhmm(60), hhmm(120)
    proc = dispyadmin("-n", where, "--set-cpus", "0", "--service_start", start, "--service_stop", stop,
                      "--serve", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    (after,) = states(proc)
    assert after["cpus"] == CPUS
    assert (after["service_start"], after["service_stop"], after["service_state"]) == (start, stop, "stopped")
    assert after["accepting"] is False and "service window" in after["not_accepting"]
    assert (after["serve"], after["served"]) == (3, 0)
    # the node itself says so (its console), not only its answer to dispyadmin
    status = node.command("status", "service window")
    assert f"{CPUS} of {CPUS} CPUs served" in status and "not accepting jobs" in status
    assert "computations served: 0 of 3" in status
    assert "admin 127.0.0.1" in node.log() and f"set CPUs to {CPUS}" in node.log()

    proc = dispyadmin("-n", where, "--no-service", "--serve", "0", "--set-cpus", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"{where} " in proc.stdout and "1 of" in proc.stdout and "accepting jobs" in proc.stdout
    status = node.command("status", "jobs done")
    assert "1 of" in status and "accepting jobs" in status and "computations served" not in status

    proc = dispyadmin("-n", where, "--set-cpus", str(CPUS + 1))
    assert proc.returncode == 1 and f"more than the {CPUS} CPUs" in proc.stdout
    proc = dispyadmin("-n", where, "--service_start", "25:00")
    assert proc.returncode == 2 and "invalid time '25:00'" in proc.stderr
    for text in (proc.stdout, proc.stderr, node.log()):
        assert ADMIN not in text


def test_secrets_are_kept_apart(node_factory: Factory) -> None:
    node = node_factory("--admin_secret", ADMIN, secret=CLIENT)
    plain = node_factory()  # no --admin_secret
    where, plain_where = f"127.0.0.1:{node.port}", f"127.0.0.1:{plain.port}"

    for wrong in ("not-the-secret", CLIENT):  # a client secret grants no admin
        proc = dispyadmin("-n", where, "--set-cpus", "1", secret=wrong)
        assert proc.returncode == 1 and "refused the admin secret" in proc.stdout, proc.stdout
    proc = dispyadmin("-n", plain_where, "--info")
    assert proc.returncode == 1 and "started without --admin_secret" in proc.stdout, proc.stdout
    plain.wait_log("admin operations are disabled")

    async def check() -> None:
        transport = DispyPluginManager(load_config("client")).make_transport("tcp")
        with pytest.raises(AuthenticationError):  # the admin secret runs no job: a client's handshake fails
            await Channel.connect(transport, "127.0.0.1", node.port, secret=ADMIN, serializers={},
                                  serializer="pickle", timeout=10)
        admin = AdminClient(transport, ADMIN)
        with pytest.raises(AdminError, match="admin operations only, not JobSubmit"):
            await admin.request(NodeAddress("127.0.0.1", node.port), m.JobSubmit("c", 1, b"not loaded"))
        assert (await admin.info(NodeAddress("127.0.0.1", node.port))).cpus >= 1  # still serving admins

    asyncio.run(check())
    assert "refused connection" in node.log()


def test_shutdown_stops_the_node(node_factory: Factory) -> None:
    node = node_factory("--admin_secret", ADMIN)
    proc = dispyadmin("-n", f"127.0.0.1:{node.port}", "--shutdown")
    assert proc.returncode == 0, proc.stderr
    assert node.wait_exit(20) == 0
    assert "asked the node to stop after its running jobs" in node.log()


def test_discovery_finds_the_node(node_factory: Factory) -> None:
    node = node_factory("--admin_secret", ADMIN, "--name", "discnode", secret=CLIENT)  # pings stay on loopback
    proc = dispyadmin("-p", str(node.base_port), "--secret", CLIENT, "--info", "--json")
    assert proc.returncode == 0, proc.stderr
    (info,) = states(proc)
    assert (info["node"], info["name"]) == (f"127.0.0.1:{node.port}", "discnode")
    assert "found node 127.0.0.1:" in proc.stderr


def test_program_over_tls_with_a_token_and_sigterm(node_factory: Factory, tmp_path: Path) -> None:
    proc = dispyadmin("--set-cpus", "two")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--set-cpus" in proc.stderr and "'two'" in proc.stderr
    proc = dispyadmin("-n", "127.0.0.1:1", "--info", secret=None)
    assert proc.returncode == 2 and "no admin secret" in proc.stderr

    cert, key = make_self_signed(tmp_path / "certs", common_name="admin-test")
    node = node_factory("--admin_secret", ADMIN, "--certfile", str(cert), "--keyfile", str(key))
    token = "page-token-5839"
    env = dict(os.environ, DISPY_ADMIN_SECRET=ADMIN)
    admin = subprocess.Popen([sys.executable, "-m", "dispy_core.admin.cli", "-n", f"127.0.0.1:{node.port}",
                              "--node_certfile", str(cert), "--node_keyfile", str(key), "--http_port", "0",
                              "--certfile", str(cert), "--keyfile", str(key), "--token", token],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert admin.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("dispyadmin ready" in line for line in lines):
            lines.append(admin.stdout.readline())
        url = next(line for line in lines if "dispyadmin ready" in line).split()[2]
        assert url.startswith("https://127.0.0.1:")
        tls = ssl.create_default_context(cafile=str(cert))
        tls.check_hostname = False
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no page
            urllib.request.urlopen(f"{url}/nodes", timeout=20, context=tls)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{url}/nodes", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=20, context=tls) as answer:
            page = answer.read().decode()
        (entry,) = json.loads(page)["nodes"]
        assert entry["cpus"] >= 1 and "error" not in entry and ADMIN not in page  # reached the node over TLS

        def post(route: str, **form: str) -> tuple[int, dict[str, Any]]:
            request = urllib.request.Request(f"{url}{route}", data=urllib.parse.urlencode(form).encode(),
                                             headers={"Authorization": f"Bearer {token}"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=20, context=tls) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, done = post("/set_service", node=entry["node"], start="06:00", stop="22:00")
        assert status == 200 and (done["service_start"], done["service_stop"]) == ("06:00", "22:00"), done
        status, done = post("/serve", node=entry["node"], computations="2")
        assert status == 200 and done["serve"] == 2, done
        status, done = post("/set_cpus", node="127.0.0.1:9", cpus="1")  # only the nodes it administers
        assert status == 400 and "not one of the nodes" in done["error"]
        admin.send_signal(signal.SIGTERM)
        assert admin.wait(20) == 0
        rest = "".join(lines) + admin.stdout.read()
        assert "dispyadmin stopped" in rest and ADMIN not in rest and "Traceback" not in rest
    finally:
        if admin.poll() is None:
            admin.kill()
            admin.wait(5)
