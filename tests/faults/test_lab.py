"""The lab itself: hosts reach each other over the bridge and nothing else; the root namespace never gets a
link, address or route; closing kills what ran inside and deletes every namespace, even a frozen process's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from dispy_core.testing.netns import Lab, netns_unusable_reason

ECHO = ("import socket, sys\n"
        "s = socket.create_server((sys.argv[1], 9000)); print('listening', flush=True)\n"
        "c, _ = s.accept(); c.sendall(c.recv(100))\n")
SEND = ("import socket, sys\n"
        "print(socket.create_connection((sys.argv[1], 9000), timeout=5).sendall(b'ping') or 'sent')\n")


def root_network() -> tuple[str, str, str]:
    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10).stdout

    return ip("-o", "link"), ip("-o", "addr"), ip("route")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_a_lab_is_isolated_and_leaves_nothing_behind() -> None:
    reason = netns_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    before = root_network()
    lab = Lab()
    try:
        a, b = lab.add_host("a"), lab.add_host("b")
        server = b.popen([sys.executable, "-c", ECHO, b.addr], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        assert a.run(sys.executable, "-c", SEND, b.addr).stdout.strip() == "sent"
        assert "default" not in a.run("ip", "route").stdout  # no way out of the lab
        frozen = a.popen(["sleep", "60"])
        deadline = time.monotonic() + 10
        while frozen.pid not in a.pids() and time.monotonic() < deadline:  # in the namespace: exec'd by ip
            time.sleep(0.02)
        frozen.send_signal(signal.SIGSTOP)
        assert root_network() == before
        made = {lab.lan, a.netns, b.netns}
        assert made <= netns_names()
    finally:
        lab.close()
    assert not made & netns_names()
    assert frozen.poll() is not None and server.poll() is not None
    assert root_network() == before
