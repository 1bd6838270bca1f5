"""Discovery datagrams, sans-I/O: a small JSON body with an HMAC under a key derived from the secret.

A datagram is ``b"DSPYD" | version (1 byte) | JSON body | HMAC-SHA256 (32 bytes)`` and never carries
a pickle: decoding parses JSON and checks each field's type. The MAC is computed with
``SHA256("dispy-discovery" | secret)``, a key of its own (never the protocol's), so a node with a secret
ignores whoever does not know it. Each datagram has a random nonce and its sender's clock: one older
or newer than ``window`` seconds, or seen before within it, is refused (no replay).

Kinds: ``ping`` (a client or scheduler looking for nodes, sent to their UDP port), ``reply`` (a node's
answer, unicast to where the ping came from, naming the ping's nonce) and ``announce`` (a node saying
it is there: at start, every ``ping_interval``, and when it comes back; sent to the clients' port).
A ``dispynetrelay`` pings its network on a client's behalf and passes each reply on with
:func:`relayed`: the same node, answering the client's nonce, signed by the relay.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "MAX_DATAGRAM", "REPLAY_WINDOW", "Datagram", "DatagramError", "ReplayGuard", "decode",
           "discovery_key", "encode", "new_nonce", "relayed"]

MAGIC = b"DSPYD"
VERSION = 1
MAC_SIZE = 32
MAX_DATAGRAM = 4096
"""Larger datagrams are ignored unread."""
REPLAY_WINDOW = 120.0
"""Seconds a datagram's clock may differ from ours (clocks of a LAN agree far better than this)."""
KINDS = ("ping", "reply", "announce")


class DatagramError(ValueError):
    """Not a discovery datagram of ours: wrong magic or version, bad MAC, malformed, stale or replayed."""


def discovery_key(secret: str | bytes) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hashlib.sha256(b"dispy-discovery" + raw).digest()


def new_nonce() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True)
class Datagram:
    kind: str
    name: str = ""
    """The sender's name (node name, or the client's computation)."""
    addrs: tuple[tuple[str, int], ...] = ()
    """reply / announce: the TCP addresses the node serves at (after ``ext_host``)."""
    cpus: int = 0
    reply_to: str = ""
    """reply: the nonce of the ping it answers."""
    nonce: str = field(default_factory=new_nonce)
    time: float = field(default_factory=time.time)


def relayed(reply: Datagram, reply_to: str = "", first: str = "") -> Datagram:
    """A node's ``reply`` to a relay's ping, passed on: an answer to the client's ping ``reply_to`` (an
    announcement when empty: for a ``--scheduler_node``), with a nonce and clock of its own (the relay
    signs it anew). The node's addresses equal to ``first`` (where the reply came from, so reachable)
    come first: a client takes the first one when the sender is not the node."""
    addrs = sorted(reply.addrs, key=lambda addr: addr[0] != first)
    return Datagram("reply" if reply_to else "announce", name=reply.name, addrs=tuple(addrs), cpus=reply.cpus,
                    reply_to=reply_to)


def encode(datagram: Datagram, key: bytes) -> bytes:
    body = json.dumps({"kind": datagram.kind, "name": datagram.name, "addrs": [list(a) for a in datagram.addrs],
                       "cpus": datagram.cpus, "reply_to": datagram.reply_to, "nonce": datagram.nonce,
                       "time": datagram.time}, separators=(",", ":")).encode("utf-8")
    head = MAGIC + bytes([VERSION])
    data = head + body + hmac.new(key, head + body, hashlib.sha256).digest()
    if len(data) > MAX_DATAGRAM:
        raise DatagramError(f"datagram of {len(data)} bytes is above {MAX_DATAGRAM}: too many addresses")
    return data


def decode(data: bytes, key: bytes) -> Datagram:
    """The datagram in ``data``, once its MAC is checked; DatagramError otherwise (replay: see ReplayGuard)."""
    if len(data) > MAX_DATAGRAM:
        raise DatagramError(f"{len(data)} bytes: too large")
    if len(data) < len(MAGIC) + 1 + MAC_SIZE + 2 or not data.startswith(MAGIC):
        raise DatagramError("not a dispy discovery datagram")
    if data[len(MAGIC)] != VERSION:
        raise DatagramError(f"discovery version {data[len(MAGIC)]}, not {VERSION}")
    signed, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, signed, hashlib.sha256).digest()):
        raise DatagramError("MAC does not match: another secret, or tampered")
    try:
        fields = json.loads(signed[len(MAGIC) + 1:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatagramError(f"malformed body: {exc}") from None
    if not isinstance(fields, dict):
        raise DatagramError("malformed body: not an object")
    return Datagram(kind=_choice(fields, "kind"), name=_str(fields, "name"), addrs=_addrs(fields.get("addrs")),
                    cpus=_int(fields, "cpus"), reply_to=_str(fields, "reply_to"), nonce=_str(fields, "nonce"),
                    time=_float(fields, "time"))


def _choice(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if value not in KINDS:
        raise DatagramError(f"{name} {value!r} is not one of {KINDS}")
    return str(value)


def _str(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str) or len(value) > 256:
        raise DatagramError(f"{name} is not a short string")
    return value


def _int(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name, 0)
    if type(value) is not int or not 0 <= value < 1 << 20:
        raise DatagramError(f"{name} is not a small non-negative integer")
    return value


def _float(fields: dict[str, Any], name: str) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatagramError(f"{name} is not a number")
    return float(value)


def _addrs(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or len(value) > 32:
        raise DatagramError("addrs is not a short list")
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                and 0 < item[1] < 65536):
            raise DatagramError(f"address {item!r} is not [ip, port]")
        try:
            ipaddress.ip_address(item[0].split("%", 1)[0])
        except ValueError:
            raise DatagramError(f"address {item[0]!r} is not an IP address") from None
        out.append((item[0], item[1]))
    return tuple(out)


class ReplayGuard:
    """Refuses datagrams outside the clock window and nonces seen within it (bounded memory)."""

    def __init__(self, window: float = REPLAY_WINDOW, capacity: int = 4096) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, datagram: Datagram, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if abs(now - datagram.time) > self.window:
            raise DatagramError(f"clock {datagram.time:.0f} is {now - datagram.time:+.0f} s from ours: stale, "
                                f"replayed, or the clocks differ by more than {self.window:g} s")
        while self._seen and (len(self._seen) >= self.capacity
                              or now - next(iter(self._seen.values())) > self.window):
            self._seen.popitem(last=False)
        if not datagram.nonce or datagram.nonce in self._seen:
            raise DatagramError("nonce already seen: a replayed datagram")
        self._seen[datagram.nonce] = now
