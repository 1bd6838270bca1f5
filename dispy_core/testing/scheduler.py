"""Starting a real ``dispyscheduler`` process on loopback for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dispy_core.testing.nodes import NodeProcess


def free_scheduler_base() -> int:
    """A base port whose +2 (the clients' port) is free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if 1026 < port < 65000:
            return port - 2
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class SchedulerProcess:
    """A running dispyscheduler child process and how clients reach it."""

    proc: subprocess.Popen[bytes]
    base_port: int
    host: str
    prefix: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The clients' port (``SharedJobCluster(scheduler_port=...)``)."""
        return self.base_port + 2

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the scheduler's log within {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self.log()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_scheduler(nodes: Sequence[NodeProcess | str] = (), extra_args: Sequence[str] = (), *,
                    host: str = "127.0.0.1", cluster_secret: str | None = None, node_secret: str | None = None,
                    prefix: Path | None = None, env: dict[str, str] | None = None, ready_timeout: float = 30.0,
                    base_port: int | None = None) -> SchedulerProcess:
    """Start ``dispyscheduler`` bound to ``host`` on a free port using ``nodes`` (``-n``; a NodeProcess is named
    with its port), and wait until it takes clients."""
    base = base_port if base_port is not None else free_scheduler_base()
    prefix = prefix or Path(tempfile.mkdtemp(prefix="dispy-scheduler-"))
    log_path = prefix / f"dispyscheduler-{base + 2}.log"
    args = [sys.executable, "-m", "dispy_core.scheduler.cli", "-i", host, "-p", str(base), "--daemon",
            "--dest_path_prefix", str(prefix / "files")]
    for node in nodes:
        args += ["-n", f"{node.host}:{node.port}" if isinstance(node, NodeProcess) else node]
    if cluster_secret is not None:
        args += ["--cluster_secret", cluster_secret]
    if node_secret is not None:
        args += ["--node_secret", node_secret]
    args += list(extra_args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL)
    scheduler = SchedulerProcess(proc, base, host, prefix, log_path, args)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dispyscheduler exited with {proc.returncode}:\n{scheduler.log()}")
        if "dispyscheduler ready" in scheduler.log():  # printed once it listens
            return scheduler
        time.sleep(0.05)
    scheduler.stop()
    raise RuntimeError(f"dispyscheduler did not start within {ready_timeout} s:\n{scheduler.log()}")
