"""What a node learns and tells about liveness: pulses to clients, clients presumed dead (zombies)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from dispy_core.channel import Channel
from dispy_core.errors import DispyError
from dispy_core.protocol import messages as m

log = logging.getLogger("dispy.node")

__all__ = ["avail_info", "pulse_loop", "send_quietly", "zombie_loop"]


def avail_info(path: Path) -> dict[str, Any]:
    """Availability the client's ``DispyNodeAvailInfo`` carries: free CPU %, memory, disk, free swap %."""
    try:
        disk = shutil.disk_usage(path).free
    except OSError:
        disk = 0
    return {
        "cpu": 100.0 - psutil.cpu_percent(interval=None),
        "memory": psutil.virtual_memory().available,
        "disk": disk,
        "swap": 100.0 - psutil.swap_memory().percent,
    }


async def send_quietly(channel: Channel, msg: m.Message) -> None:
    """Send, ignoring a connection that is gone (its loss is handled where it is read)."""
    try:
        await channel.send(msg)
    except (DispyError, OSError):
        pass


async def pulse_loop(channel: Channel, interval: float, make_pulse: Callable[[], m.Pulse],
                     stopped: asyncio.Event) -> None:
    """Tell the client every ``interval`` s how busy the node is (its ``pulse_interval``)."""
    try:
        while not channel.closed and not stopped.is_set():
            await asyncio.sleep(interval)
            if channel.closed:
                break
            await channel.send(make_pulse())
    except (DispyError, OSError):
        pass


async def zombie_loop(limit: float, channels: Callable[[], set[Channel]], stopped: asyncio.Event,
                      drop: Callable[[Channel, float], Awaitable[None]],
                      spawn: Callable[[Awaitable[Any]], None]) -> None:
    """Drop a client whose connection has been silent ``limit`` s (no frame received); at half that, ping
    it, so a client that answers pings stays alive while idle."""
    period = max(0.05, min(limit / 4.0, 30.0))
    loop = asyncio.get_running_loop()
    seen: dict[Channel, tuple[int, float, bool]] = {}  # rx_bytes, since when, pinged
    while not stopped.is_set():
        await asyncio.sleep(period)
        now = loop.time()
        live = channels()
        for channel in list(live):
            rx = channel.rx_bytes
            last = seen.get(channel)
            if last is None or last[0] != rx:
                seen[channel] = (rx, now, False)
                continue
            silent = now - last[1]
            if silent >= limit:
                seen.pop(channel, None)
                spawn(drop(channel, silent))
            elif silent >= limit / 2 and not last[2] and not channel.closed:
                seen[channel] = (rx, last[1], True)
                spawn(send_quietly(channel, m.Ping(channel.next_req_id())))
        for channel in [c for c in seen if c not in live]:
            del seen[channel]
