"""dispynode's command line: bad options exit 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("args", "message"), [
    (["--cpus", "abc"], "invalid int value"),
    (["--cpus", "100000"], "more than"),
    (["--max_file_size", "lots"], "invalid size"),
    (["--certfile", "/nonexistent/cert.pem"], "not a readable file"),
    (["--msg_timeout", "-1"], "must be positive"),
    (["--executor", "nosuch"], "installed executor plugins: fork, spawn"),
])
def test_bad_option_exits_2(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dispy_core.node.cli", "--daemon", "-i", "127.0.0.1", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
