"""dispynetrelay's console (unless ``--daemon``): ``status``, ``quit``, ``help`` read from stdin.

As dispynode's console: a daemon thread blocks in ``os.read`` and hands each line to the event loop, so
any stdin works (terminal, pipe, /dev/null); end of input ends the console only, never the relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("dispy.relay")

__all__ = ["Console"]

MAX_LINE = 4096
HELP = """commands:
  status (or an empty line)  what the relay passed on, and the clients that pinged lately
  quit, exit                 stop the relay
  help                       this text"""


class Console:
    def __init__(self, status: Callable[[], list[str]], stop: Callable[[], None], fd: int = 0) -> None:
        self.status = status
        self.stop = stop
        self.fd = fd

    def execute(self, line: str) -> str:
        command = (line.strip().split() or ["status"])[0].lower()
        if command == "status":
            return "\n".join(self.status())
        if command in ("quit", "exit"):
            self.stop()
            return "stopping"
        if command == "help":
            return HELP
        return f"unknown command {command!r}; type help"

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        print("dispynetrelay console: type 'help' for commands", flush=True)
        threading.Thread(target=self._read_lines, args=(loop,), name="dispynetrelay-console", daemon=True).start()

    def _read_lines(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self.fd, MAX_LINE)
            except OSError as exc:
                log.info("console: cannot read stdin (%s); the relay keeps running", exc)
                return
            if not data:
                log.info("console: end of input; the relay keeps running (stop it with SIGTERM)")
                return
            lines = (pending + data).split(b"\n")
            pending = lines.pop()[-MAX_LINE:]
            for raw in lines:
                try:
                    loop.call_soon_threadsafe(self._run, raw[:MAX_LINE].decode("utf-8", "replace"))
                except RuntimeError:  # the loop is closed: the relay is stopping
                    return

    def _run(self, line: str) -> None:
        try:
            print(self.execute(line), flush=True)
        except (OSError, ValueError):  # nobody reads the console any more
            pass
        except Exception:  # an operator's typo must never take the relay down
            log.exception("console command %r failed", line)
            print(f"command {line!r} failed", file=sys.stderr, flush=True)
