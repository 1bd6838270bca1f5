"""Starting real ``dispynode`` processes on loopback for tests and benchmarks."""

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


def free_base_port() -> int:
    """A base port whose +1 is free on 127.0.0.1 (a node listens on base + 1)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if 1024 < port < 65000:
            return port - 1
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class NodeProcess:
    """A running dispynode child process and how to reach it."""

    proc: subprocess.Popen[bytes]
    base_port: int
    host: str
    prefix: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.base_port + 1

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 20.0, start: int = 0) -> str:
        """Wait until ``text`` appears in the log after offset ``start``; the log from there on."""
        deadline = time.monotonic() + timeout
        while True:
            tail = self.log()[start:]
            if text in tail:
                return tail
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the node's log within {timeout} s:\n{self.log()}")
            if self.proc.poll() is not None and text not in self.log()[start:]:
                raise AssertionError(f"node exited with {self.proc.returncode} before logging {text!r}:\n"
                                     f"{self.log()}")
            time.sleep(0.05)

    def command(self, line: str, expect: str, timeout: float = 20.0) -> str:
        """Type ``line`` into the node's console (a node started with ``daemon=False``) and wait until
        ``expect`` is printed after it; the output from there on."""
        assert self.proc.stdin is not None, "start the node with daemon=False for a console"
        start = len(self.log())
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.wait_log(expect, timeout, start)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_node(extra_args: Sequence[str] = (), *, host: str = "127.0.0.1", secret: str | None = None,
               prefix: Path | None = None, env: dict[str, str] | None = None, python: str | None = None,
               ready_timeout: float = 30.0, log_dir: Path | None = None, daemon: bool = True,
               base_port: int | None = None) -> NodeProcess:
    """Start ``dispynode`` bound to ``host`` on a free port (or ``base_port``) and wait until it listens.

    With ``daemon=False`` the node runs its console on a pipe: see :meth:`NodeProcess.command`.
    """
    base = base_port if base_port is not None else free_base_port()
    prefix = prefix or Path(tempfile.mkdtemp(prefix="dispy-node-"))
    log_dir = log_dir or prefix
    log_path = Path(log_dir) / f"dispynode-{base + 1}.log"
    args = [python or sys.executable, "-m", "dispy_core.node.cli", "-i", host, "-p", str(base),
            *(["--daemon"] if daemon else []), "--dest_path_prefix", str(prefix), *extra_args]
    if secret is not None:
        args += ["-s", secret]
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL if daemon else subprocess.PIPE)
    node = NodeProcess(proc, base, host, prefix, log_path, args)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dispynode exited with {proc.returncode}:\n{node.log()}")
        if "dispynode ready" in node.log():
            with socket.socket(family) as probe:
                probe.settimeout(1)
                if probe.connect_ex((host, node.port)) == 0:
                    return node
        time.sleep(0.05)
    node.stop()
    raise RuntimeError(f"dispynode did not start within {ready_timeout} s:\n{node.log()}")
