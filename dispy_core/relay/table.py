"""What ``dispynetrelay`` remembers, sans-I/O: whose ping each of its own pings stands for, and which
clients pinged lately. Everything is bounded in number and in time, and pings are rate limited per
client and in all, so that a flood (or, with an empty secret, a forged source) cannot grow the relay's
memory or make it broadcast without end: one relayed ping makes every node answer, an amplification.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CLIENT_TTL", "MAX_CLIENTS", "MAX_PENDING", "PENDING_TTL", "Asker", "RelayTable"]

Address = tuple[str, int]

PENDING_TTL = 15.0
"""Seconds the replies to one of the relay's pings are passed on (nodes answer within milliseconds)."""
CLIENT_TTL = 300.0
"""A client that pinged within this long also hears the announcements of the relay's network."""
MAX_PENDING = 1024
MAX_CLIENTS = 256
MAX_REPLIES = 512
"""Replies passed on per relayed ping: more nodes than this answer no single ping."""
RATE_WINDOW = 10.0
MAX_PINGS_PER_CLIENT = 12
"""Pings relayed per client and window (a client's search pings three times)."""
MAX_PINGS = 120
"""Pings relayed per window in all."""


@dataclass
class Asker:
    """Who a ping of the relay stands for; ``source`` None: the relay's own (for ``--scheduler_node``)."""

    source: Address | None
    local: str
    """The relay's address the client pinged: what passes its answers back leaves from there (its NAT)."""
    nonce: str
    """The client's ping nonce, which its answers must name."""
    expires: float
    replies: int = 0


@dataclass
class _Client:
    local: str
    last: float
    window_start: float
    pings: int = 0


class RelayTable:
    """The relay's memory; ``clock`` is monotonic seconds (a test passes its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pending: OrderedDict[str, Asker] = OrderedDict()
        self.clients: OrderedDict[Address, _Client] = OrderedDict()
        self._window = (clock(), 0)  # start of the global rate window, pings relayed in it

    def admit(self, source: Address, local: str, client_nonce: str, own_nonce: str) -> str:
        """Record that ``own_nonce`` pings on behalf of ``client_nonce`` from ``source``; "" when admitted,
        else why not (rate limited)."""
        now = self.clock()
        self._prune(now)
        start, count = self._window
        if now - start >= RATE_WINDOW:
            start, count = now, 0
        if count >= MAX_PINGS:
            return f"more than {MAX_PINGS} pings in {RATE_WINDOW:g} s from all clients"
        client = self.clients.pop(source, None)
        if client is None or now - client.window_start >= RATE_WINDOW:
            client = _Client(local, now, now)
        self.clients[source] = client  # most recent last
        while len(self.clients) > MAX_CLIENTS:
            self.clients.popitem(last=False)
        client.last, client.local = now, local
        if client.pings >= MAX_PINGS_PER_CLIENT:
            return f"more than {MAX_PINGS_PER_CLIENT} pings in {RATE_WINDOW:g} s from this client"
        client.pings += 1
        self._window = (start, count + 1)
        self._remember(own_nonce, Asker(source, local, client_nonce, now + PENDING_TTL))
        return ""

    def own(self, nonce: str) -> None:
        """A ping of the relay's own (at start): its answers go to the ``--scheduler_node`` s."""
        now = self.clock()
        self._prune(now)
        self._remember(nonce, Asker(None, "", "", now + PENDING_TTL))

    def answer(self, reply_to: str) -> Asker | None:
        """Who a node's reply to the relay's ping ``reply_to`` is for; None: no ping of ours (or expired,
        or answered too often)."""
        asker = self.pending.get(reply_to)
        if asker is None or asker.expires < self.clock() or asker.replies >= MAX_REPLIES:
            return None
        asker.replies += 1
        return asker

    def is_own(self, nonce: str) -> bool:
        return nonce in self.pending

    def listeners(self) -> list[tuple[Address, str]]:
        """Clients that pinged within ``CLIENT_TTL`` (where they pinged from, and the relay address they
        pinged), most recent last."""
        now = self.clock()
        self._prune(now)
        return [(source, client.local) for source, client in self.clients.items()]

    def _remember(self, nonce: str, asker: Asker) -> None:
        self.pending[nonce] = asker
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    def _prune(self, now: float) -> None:
        """Forget what expired: both maps are in time order, so only their fronts are looked at."""
        while self.pending and next(iter(self.pending.values())).expires < now:
            self.pending.popitem(last=False)
        while self.clients and now - next(iter(self.clients.values())).last > CLIENT_TTL:
            self.clients.popitem(last=False)
