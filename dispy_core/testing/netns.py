"""A throw-away network of "hosts" in Linux network namespaces, for tests that break the network for real.

Layout: one "lan" namespace holds a bridge; each host is a namespace with one veth (``eth0``) whose peer is
a port of that bridge. The root namespace gets no bridge, veth, address or route: every link is created
inside a namespace of the lab (``ip -n LAN link add ... peer ... netns HOST``), and the hosts have no
default route, so no packet leaves the lab. Names carry the pid and a counter, so two runs never collide.

:meth:`Lab.close` (also on ``with`` exit) kills every process left in the lab's namespaces, by pid, and
deletes the namespaces (which destroys their links); it is idempotent and runs as far as it can.

Faults a test can inject on a host: :meth:`Host.link_down` / :meth:`Host.link_up` (``ip link set``) and
:meth:`Host.set_loss` (random packet loss with nftables ``numgen``, or iptables ``statistic`` when nft is
missing; ``tc netem`` is not assumed to exist).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Host", "Lab", "LabError", "loss_tool", "netns_unusable_reason", "reap_stale_labs"]

_labs = itertools.count(1)


class LabError(RuntimeError):
    """An ``ip``/``nft`` command of the lab failed; the message has the command and its stderr."""


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_unusable_reason() -> str | None:
    """None when this process can build a lab; otherwise why not, worded for ``pytest.skip``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace tests need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return "network namespace tests need iproute2 ('ip' is not on PATH)"
    probe = f"dprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"'ip netns add' does not work here: {made.stderr.strip()}"
        link = _ip("-n", probe, "link", "add", "pbr0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot create a bridge inside a network namespace: {link.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' is unusable: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


_OURS = re.compile(r"(?:dfx(\d+)n\d+-.+|dprobe(\d+))")
"""Names this module gives namespaces; the number is the pid of the process that made them."""


def reap_stale_labs() -> list[str]:
    """Delete the namespaces of labs whose test process died without closing them (SIGKILL, power cut),
    after killing what still runs in them; only names this module makes, only of pids no longer alive."""
    listing = _ip("netns", "list", check=False).stdout
    reaped = []
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        match = _OURS.fullmatch(name)
        if match is None or _alive(int(match[1] or match[2])):
            continue
        for word in _ip("netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(word), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        if _ip("netns", "del", name, check=False).returncode == 0:
            reaped.append(name)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def loss_tool() -> str | None:
    """The tool :meth:`Host.set_loss` will use: ``"nft"``, ``"iptables"``, or None when neither exists."""
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    return None


@dataclass
class Host:
    """One namespace of the lab with an address on the lab's bridge."""

    lab: Lab
    name: str
    netns: str
    addr: str
    bridge_port: str
    link: str = "eth0"
    loss_rules: str | None = None

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host (``ip netns exec`` execs it: the child's pid is the command's)."""
        return ["ip", "netns", "exec", self.netns, *command]

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(*command), **kwargs)
        self.lab.procs.append(proc)
        return proc

    def run(self, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process living in this host's namespace (those a test started and their descendants)."""
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def link_down(self) -> None:
        _ip("-n", self.netns, "link", "set", self.link, "down")

    def link_up(self) -> None:
        _ip("-n", self.netns, "link", "set", self.link, "up")

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of the packets this host sends and, independently, of those it receives."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0..100 %, not {percent}")
        self.clear_loss()
        if percent == 0:
            return
        tool = loss_tool()
        if tool == "nft":
            ruleset = (f"table inet dispyloss {{\n"
                       f"  chain input {{ type filter hook input priority 0; policy accept;\n"
                       f"    iifname \"{self.link}\" numgen random mod 100 < {percent} counter drop; }}\n"
                       f"  chain output {{ type filter hook output priority 0; policy accept;\n"
                       f"    oifname \"{self.link}\" numgen random mod 100 < {percent} counter drop; }}\n"
                       f"}}\n")
            proc = subprocess.run(self.argv("nft", "-f", "-"), input=ruleset, capture_output=True, text=True,
                                  timeout=30)
            if proc.returncode != 0:
                raise LabError(f"nft in {self.netns}: {proc.stderr.strip()}")
        elif tool == "iptables":
            probability = f"{percent / 100:.4f}"
            for chain, way in (("INPUT", "-i"), ("OUTPUT", "-o")):
                proc = self.run("iptables", "-A", chain, way, self.link, "-m", "statistic", "--mode", "random",
                                "--probability", probability, "-j", "DROP")
                if proc.returncode != 0:
                    raise LabError(f"iptables in {self.netns}: {proc.stderr.strip()}")
        else:
            raise LabError("packet loss needs nft or iptables; neither is installed")
        self.loss_rules = tool

    def dropped(self) -> int:
        """Packets :meth:`set_loss` dropped so far, both ways (evidence that the fault was real)."""
        if self.loss_rules == "nft":
            listing = self.run("nft", "list", "table", "inet", "dispyloss").stdout
            return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))
        if self.loss_rules == "iptables":
            total = 0
            for chain in ("INPUT", "OUTPUT"):
                for line in self.run("iptables", "-L", chain, "-v", "-x", "-n").stdout.splitlines():
                    words = line.split()
                    if len(words) > 2 and words[2] == "DROP" and words[0].isdigit():
                        total += int(words[0])
            return total
        return 0

    def clear_loss(self) -> None:
        if self.loss_rules == "nft":
            self.run("nft", "delete", "table", "inet", "dispyloss")
        elif self.loss_rules == "iptables":
            self.run("iptables", "-F", "INPUT")
            self.run("iptables", "-F", "OUTPUT")
        self.loss_rules = None


@dataclass
class Lab:
    """A bridge in its own namespace and the hosts plugged into it; see the module docstring."""

    index: int = field(default_factory=lambda: next(_labs))
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    tag: str = ""
    subnet: str = ""
    _namespaces: list[str] = field(default_factory=list)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.tag = f"dfx{os.getpid()}n{self.index}"
        self.subnet = f"10.231.{self.index % 250}"
        self.lan = f"{self.tag}-lan"
        self.bridge = f"br{os.getpid()}"[:15]
        try:
            self._add_netns(self.lan)
            _ip("-n", self.lan, "link", "add", self.bridge, "type", "bridge")
            _ip("-n", self.lan, "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host ``name`` with the next address of the lab's /24, its link up."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        index = len(self.hosts) + 1
        netns = f"{self.tag}-{name}"
        port = f"v{os.getpid()}h{index}"[:15]
        host = Host(self, name, netns, f"{self.subnet}.{10 + index}", port)
        self._add_netns(netns)
        _ip("-n", self.lan, "link", "add", port, "type", "veth", "peer", "name", host.link, "netns", netns)
        _ip("-n", self.lan, "link", "set", port, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{host.addr}/24", "dev", host.link)
        _ip("-n", netns, "link", "set", host.link, "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill what runs in the lab (by pid), reap it, delete the namespaces; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for _ in range(5):  # a dying process may still fork once; look again until the lab is empty
            pids = [pid for host in self.hosts.values() for pid in host.pids() if pid != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for proc in self.procs:  # one stopped before it entered its namespace is not in any list above
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                _close_quietly(stream)
        errors = []
        for name in reversed(self._namespaces):
            deleted = _ip("netns", "del", name, check=False)
            if deleted.returncode != 0:
                errors.append(f"{name}: {deleted.stderr.strip()}")
        if errors:
            raise LabError("could not delete namespaces: " + "; ".join(errors))


def _close_quietly(stream: IO[Any] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass
