"""Starting dispynodes and client programs on the hosts of a lab, with discovery left to find them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dispy_core.testing.netns import Host

SECRET = "lan-secret"
CLIENT = """
import json, logging, sys, time
import dispy

logging.basicConfig(level=logging.INFO)  # a program that wants dispy's messages sets up logging (dispy never does)

def compute(n):
    import socket
    return n * n, socket.gethostname(), dispy_node_name

options = json.loads(sys.argv[1])
cluster = dispy.JobCluster(compute, secret=sys.argv[4], **options)
deadline = time.monotonic() + 30
while len(cluster.status()["nodes"]) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.1)
found = sorted((n.name, n.ip_addr) for n in cluster.status()["nodes"])
jobs = [cluster.submit(i) for i in range(int(sys.argv[3]))]
cluster.wait(timeout=60)
print(json.dumps({"found": found, "results": [[j.status, j.result[0] if j.result else None,
                  j.result[2] if j.result else None] for j in jobs]}))
cluster.close()
"""


def env_without_loopback_only() -> dict[str, str]:
    """The tests' own DISPY_HOST=127.0.0.1 (tests/conftest.py) must not reach hosts of the lab."""
    env = dict(os.environ)
    env.pop("DISPY_HOST", None)
    return env


def start_node(host: Host, name: str, prefix: Path, *extra: str) -> subprocess.Popen[Any]:
    """A dispynode on ``host``, bound to every address (no ``-i``): as a user starts one on a LAN."""
    prefix.mkdir(parents=True, exist_ok=True)
    log = open(prefix / "node.log", "wb")  # noqa: SIM115 - closed with the process
    proc = host.popen([sys.executable, "-m", "dispy_core.node.cli", "--daemon", "--cpus", "1", "--name", name,
                       "-s", SECRET, "--dest_path_prefix", str(prefix), *extra],
                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env_without_loopback_only())
    deadline = time.monotonic() + 30
    while b"dispynode ready" not in (prefix / "node.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"node {name} did not start:\n{(prefix / 'node.log').read_text()}")
        time.sleep(0.05)
    return proc


def run_client(host: Host, options: dict[str, Any], want_nodes: int, jobs: int) -> dict[str, Any]:
    proc = subprocess.run(host.argv(sys.executable, "-c", CLIENT, json.dumps(options), str(want_nodes), str(jobs),
                                    SECRET),
                          capture_output=True, text=True, timeout=120, env=env_without_loopback_only())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["log"] = proc.stderr
    return result
