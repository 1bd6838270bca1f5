"""A throw-away network of "hosts" in Linux network namespaces, for tests that break the network for real.

Layout: one "lan" namespace holds a bridge; each host is a namespace with one veth (``eth0``) whose peer is
a port of that bridge. The root namespace gets no bridge, veth, address or route: every link is created
inside a namespace of the lab (``ip -n LAN link add ... peer ... netns HOST``), and the hosts have no
default route, so no packet leaves the lab. Names carry the pid and a counter, so two runs never collide.

:meth:`Lab.close` (also on ``with`` exit) kills every process left in the lab's namespaces, by pid, and
deletes the namespaces (which destroys their links); it is idempotent and runs as far as it can.

Several networks: :meth:`Lab.add_subnet` makes another bridge (another /24) in the same "lan" namespace,
:meth:`Lab.add_host` puts a host on any of them, and :meth:`Lab.add_router` makes a host with a veth on
each subnet it joins (``eth0``, ``eth1``, ...; address ``.1``, ``.2`` ... of each) and IPv4 forwarding on.
Hosts reach another subnet through a router only after :meth:`Host.add_route`; broadcasts never cross.
The router can hide a subnet behind NAT (:meth:`Host.masquerade`) and forward ports to it
(:meth:`Host.forward_port`), with nftables, or iptables when nft is missing. Routes name lab subnets
only, and no lab link leads to the root namespace: still no packet leaves the lab.

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

__all__ = ["Host", "Lab", "LabError", "Subnet", "loss_tool", "nat_tool", "netns_unusable_reason", "reap_stale_labs"]

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


_NFT_NAT = ("add table ip dispynat\n"
            "add chain ip dispynat prerouting { type nat hook prerouting priority dstnat; policy accept; }\n"
            "add chain ip dispynat postrouting { type nat hook postrouting priority srcnat; policy accept; }\n")
"""The NAT table and its chains (``add`` does nothing when they exist), before each rule."""


def nat_tool() -> str | None:
    """The tool :meth:`Host.masquerade` and :meth:`Host.forward_port` use: ``"nft"``, ``"iptables"`` or None."""
    return loss_tool()


@dataclass
class Subnet:
    """A LAN of the lab: a bridge in the lab's "lan" namespace and a /24 (``prefix`` .0/24)."""

    name: str
    bridge: str
    prefix: str
    hosts: int = 0
    """Hosts on it so far (addresses ``prefix``.11, .12, ...)."""
    routers: int = 0
    """Routers on it so far (addresses ``prefix``.1, .2, ...)."""

    @property
    def cidr(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def pattern(self) -> str:
        """The dispy wildcard for its hosts (``nodes=['10.232.3.*']``)."""
        return f"{self.prefix}.*"


@dataclass
class Host:
    """One namespace of the lab with an address on the lab's bridge (a router: one on each subnet)."""

    lab: Lab
    name: str
    netns: str
    addr: str
    bridge_port: str
    link: str = "eth0"
    loss_rules: str | None = None
    addrs: dict[str, str] = field(default_factory=dict)
    """Subnet name -> this host's address there."""
    links: dict[str, str] = field(default_factory=dict)
    """Subnet name -> this host's link on it."""
    nat_rules: str | None = None

    def address_on(self, subnet: Subnet) -> str:
        return self.addrs[subnet.name]

    def add_route(self, subnet: Subnet, via: str) -> None:
        """Packets for ``subnet`` go through the router at ``via`` (an address on this host's subnet)."""
        _ip("-n", self.netns, "route", "add", subnet.cidr, "via", via)

    def masquerade(self, subnet: Subnet) -> None:
        """NAT: what this router sends out on ``subnet`` leaves with its address there (and a port of its
        choosing); the answers find their way back through the connection tracking."""
        link = self.links[subnet.name]
        self._nat(f'add rule ip dispynat postrouting oifname "{link}" masquerade',
                  ["-t", "nat", "-A", "POSTROUTING", "-o", link, "-j", "MASQUERADE"])

    def forward_port(self, subnet: Subnet, port: int, to_addr: str, protocols: Sequence[str] = ("tcp", "udp")) -> None:
        """A port forward: ``port`` of this router's address on ``subnet`` leads to ``to_addr`` (same port)."""
        addr = self.address_on(subnet)
        for proto in protocols:
            self._nat(f"add rule ip dispynat prerouting ip daddr {addr} {proto} dport {port} dnat to {to_addr}:{port}",
                      ["-t", "nat", "-A", "PREROUTING", "-d", addr, "-p", proto, "--dport", str(port), "-j", "DNAT",
                       "--to-destination", f"{to_addr}:{port}"])

    def _nat(self, nft_rule: str, iptables_args: list[str]) -> None:
        tool = nat_tool()
        if tool == "nft":
            proc = subprocess.run(self.argv("nft", "-f", "-"), input=_NFT_NAT + nft_rule + "\n", capture_output=True,
                                  text=True, timeout=30)
        elif tool == "iptables":
            proc = self.run("iptables", *iptables_args)
        else:
            raise LabError("NAT needs nft or iptables; neither is installed")
        if proc.returncode != 0:
            raise LabError(f"{tool} in {self.netns}: {proc.stderr.strip()}")
        self.nat_rules = tool

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
    subnets: dict[str, Subnet] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _closed: bool = False

    def __post_init__(self) -> None:
        self.tag = f"dfx{os.getpid()}n{self.index}"
        self.subnet = f"10.231.{self.index % 250}"
        self.lan = f"{self.tag}-lan"
        self.bridge = f"br{os.getpid()}"[:15]
        try:
            self._add_netns(self.lan)
            self._add_bridge(self.bridge)
        except BaseException:
            self.close()
            raise
        self.subnets["lan"] = Subnet("lan", self.bridge, self.subnet)

    def _add_bridge(self, bridge: str) -> None:
        _ip("-n", self.lan, "link", "add", bridge, "type", "bridge")
        _ip("-n", self.lan, "link", "set", bridge, "up")

    def add_subnet(self, name: str) -> Subnet:
        """Another LAN: a bridge of its own in the "lan" namespace, the /24 ``10.(231 + k).<lab>``."""
        if name in self.subnets:
            raise ValueError(f"subnet {name!r} already exists")
        k = len(self.subnets)
        if k > 24:
            raise ValueError("a lab has at most 25 subnets")
        subnet = Subnet(name, f"b{os.getpid()}s{k}"[:15], f"10.{231 + k}.{self.index % 250}")
        self._add_bridge(subnet.bridge)
        self.subnets[name] = subnet
        return subnet

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, subnet: Subnet | None = None) -> Host:
        """A new host ``name`` with the next address of ``subnet`` (the lab's first /24 by default), its
        link up."""
        subnet = subnet or self.subnets["lan"]
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        subnet.hosts += 1
        netns = f"{self.tag}-{name}"
        addr = f"{subnet.prefix}.{10 + subnet.hosts}"
        self._add_netns(netns)
        host = Host(self, name, netns, addr, self._plug(netns, "eth0", subnet, addr))
        host.addrs[subnet.name], host.links[subnet.name] = addr, "eth0"
        self.hosts[name] = host
        return host

    def add_router(self, name: str, *subnets: Subnet) -> Host:
        """A host with a link on each of ``subnets`` (``eth0``, ``eth1``, ...) that forwards IPv4 between
        them; its address on each is the subnet's next router address (``.1`` first)."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        if len(subnets) < 2:
            raise ValueError("a router joins at least two subnets")
        netns = f"{self.tag}-{name}"
        self._add_netns(netns)
        host = Host(self, name, netns, "", "")
        self.hosts[name] = host  # killed and deleted with the lab even if what follows fails
        for i, subnet in enumerate(subnets):
            subnet.routers += 1
            addr, link = f"{subnet.prefix}.{subnet.routers}", f"eth{i}"
            port = self._plug(netns, link, subnet, addr)
            host.addrs[subnet.name], host.links[subnet.name] = addr, link
            if i == 0:
                host.addr, host.bridge_port = addr, port
        forward = host.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        if forward.returncode != 0:
            raise LabError(f"cannot turn IPv4 forwarding on in {netns}: {forward.stderr.strip()}")
        return host

    def _plug(self, netns: str, link: str, subnet: Subnet, addr: str) -> str:
        """A veth from ``netns`` (named ``link``, with ``addr``/24, up) to a new port of ``subnet``'s bridge."""
        port = f"v{os.getpid()}h{next(self._ports)}"[:15]
        _ip("-n", self.lan, "link", "add", port, "type", "veth", "peer", "name", link, "netns", netns)
        _ip("-n", self.lan, "link", "set", port, "master", subnet.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{addr}/24", "dev", link)
        _ip("-n", netns, "link", "set", link, "up")
        return port

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
