"""The live progress bar of ``cluster.wait(progress=True)`` and ``dispy_cmd``: drawn under a pseudo-terminal,
absent when the output is a pipe. Real client programs run as child processes against a real node."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispy_core.testing.nodes import NodeProcess, start_node

CLIENT = textwrap.dedent('''
    import sys

    import dispy


    def compute(n):
        import time

        time.sleep(0.05)
        if n == 3:
            raise ValueError("three")
        return n


    if __name__ == "__main__":
        cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=int(sys.argv[1]))
        jobs = [cluster.submit(n) for n in range(20)]
        finished = cluster.wait(timeout=120, progress=True)
        cluster.close()
        print("WAITED", finished, flush=True)
''')


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = start_node(["-c", "2"], prefix=Path(tmp_path_factory.mktemp("node")))
    yield started
    started.stop()


def run_in_pty(args: list[str], timeout: float = 90.0) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal (120 columns) as stdin, stdout and stderr; its exit status and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def write_client(tmp_path: Path) -> Path:
    path = tmp_path / "client.py"
    path.write_text(CLIENT)
    return path


def test_wait_progress_draws_a_bar_on_a_terminal(node: NodeProcess, tmp_path: Path) -> None:
    status, output = run_in_pty([sys.executable, str(write_client(tmp_path)), str(node.base_port)])
    assert status == 0, output
    assert "WAITED True" in output
    assert "20/20" in output and "job/s" in output, output  # done of total, and the rate
    assert "failed 1" in output and "running" in output, output
    assert "\r" in output  # redrawn in place


def test_wait_progress_draws_nothing_into_a_pipe(node: NodeProcess, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(write_client(tmp_path)), str(node.base_port)], capture_output=True,
                          text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WAITED True" in done.stdout
    assert "20/20" not in output and "job/s" not in output and "\r" not in output, output


def test_dispy_cmd_shows_the_bar_on_a_terminal(node: NodeProcess) -> None:
    status, output = run_in_pty([sys.executable, "-m", "dispy_core.cmd", "echo", "-a", "one", "-a", "two",
                                 "-a", "three", "-n", "127.0.0.1", "-p", str(node.base_port)])
    assert status == 0, output
    assert "3/3" in output and "failed 0" in output, output
    assert "=== job 1 (one)" in output and "=== job 3 (three)" in output
