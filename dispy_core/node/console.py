"""dispynode's interactive console (unless ``--daemon``): operator commands read from stdin.

A daemon thread blocks in ``os.read`` on stdin and hands each line to the event loop, so the loop
never waits for the operator, and any kind of stdin works (terminal, pipe, file, /dev/null).
``os.read`` rather than ``sys.stdin``: a thread blocked inside a buffered reader holds its lock and can
abort the interpreter's exit. End of input ends the console only; the node keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from dispy_core.channel import _fmt

if TYPE_CHECKING:
    from dispy_core.node.server import NodeServer

log = logging.getLogger("dispy.node.console")

MAX_LINE = 4096
"""Longer input lines are cut: no command is anywhere near this long."""

HELP = """commands:
  status (or an empty line)  name, CPUs, busy, jobs done, computations and their clients
  cpus N                     serve N CPUs (0 = all, negative = all but N)
  stop                       accept no new jobs (running jobs go on)
  start                      accept jobs again
  release                    close every computation (terminating its jobs) and free the node from its clients
  quit                       stop the node once the running jobs are done
  exit                       stop the node now, terminating running jobs
  help                       this text"""


class Console:
    """Parses and runs commands on the server's loop; :meth:`execute` is the testable core."""

    def __init__(self, server: NodeServer, out: TextIO | None = None, fd: int = 0) -> None:
        self.server = server
        self.out = out or sys.stdout
        self.fd = fd
        self._thread: threading.Thread | None = None
        self._detached = threading.Event()

    # ------------------------------------------------------------------ commands
    def execute(self, line: str) -> str:
        """Run one command line; returns what to show the operator."""
        words = line.strip().split()
        command = words[0].lower() if words else "status"
        args = words[1:]
        handler: Callable[[list[str]], str] | None = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            return f"unknown command {command!r}; type help"
        return handler(args)

    def _cmd_status(self, args: list[str]) -> str:
        return "\n".join(status_lines(self.server))

    def _cmd_help(self, args: list[str]) -> str:
        return HELP

    def _cmd_cpus(self, args: list[str]) -> str:
        usage = "usage: cpus N (0 = all, negative = all but N)"
        if len(args) != 1:
            return usage
        try:
            wanted = int(args[0])
        except ValueError:
            return f"cpus not changed: {args[0]!r} is not a whole number; {usage}"
        try:
            cpus = self.server.set_cpus(wanted)
        except ValueError as exc:
            return f"cpus not changed: {exc}"
        return f"serving {cpus} CPUs"

    def _cmd_stop(self, args: list[str]) -> str:
        self.server.set_accepting(False)
        return "accepting no new jobs (running jobs go on); 'start' to accept again"

    def _cmd_start(self, args: list[str]) -> str:
        self.server.set_accepting(True)
        return "accepting jobs"

    def _cmd_release(self, args: list[str]) -> str:
        names = self.server.release()
        return f"released: {', '.join(names)}" if names else "released: no computations"

    def _cmd_quit(self, args: list[str]) -> str:
        self.server.request_quit("console")
        return f"quitting after {self.server.busy} running jobs"

    def _cmd_exit(self, args: list[str]) -> str:
        self.server.request_stop()
        return "exiting now"

    # ------------------------------------------------------------------ stdin
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        print("dispynode console: type 'help' for commands", file=self.out, flush=True)
        self._thread = threading.Thread(target=self._read_lines, args=(loop,), name="dispynode-console",
                                        daemon=True)
        self._thread.start()

    def detach(self) -> None:
        """Ignore further input (the reader thread, blocked in read, dies with the process)."""
        self._detached.set()

    def _read_lines(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = b""
        while not self._detached.is_set():
            try:
                data = os.read(self.fd, MAX_LINE)
            except OSError as exc:
                log.info("console: cannot read stdin (%s); the node keeps running", exc)
                return
            if not data:
                log.info("console: end of input; the node keeps running (stop it with SIGTERM)")
                return
            pending += data
            lines = pending.split(b"\n")
            pending = lines.pop()[-MAX_LINE:]
            for raw in lines:
                line = raw[:MAX_LINE].decode("utf-8", "replace")
                try:
                    loop.call_soon_threadsafe(self._run, line)
                except RuntimeError:  # the loop is closed: the node is stopping
                    return

    def _run(self, line: str) -> None:
        if self._detached.is_set():
            return
        try:
            text = self.execute(line)
        except Exception as exc:  # an operator's typo must never take the node down
            log.debug("console command %r failed", line, exc_info=True)
            text = f"command {line.strip()!r} failed: {type(exc).__name__}: {exc}"
        try:
            print(text, file=self.out, flush=True)
        except (OSError, ValueError):  # nobody reads the console any more; the node goes on
            pass


def status_lines(server: NodeServer) -> list[str]:
    """The console's ``status``: the node, then each computation with its client and jobs."""
    total = os.cpu_count() or 1
    state = "accepting jobs" if server.state.cap else f"not accepting jobs: {server.not_accepting_reason()}"
    lines = [f"dispynode {server.name} at {_fmt(server.address)}: {server.cpus} of {total} CPUs served, "
             f"{server.busy} busy, {server.jobs_done} jobs done; {state}"]
    lines.append(f"  security: {server.security_note()}")
    if server.options.service.active:
        lines.append(f"  service window: {server.service_state.value}")
    if not server.computations:
        lines.append("  no computations")
    for comp in server.computations.values():
        client = _fmt(comp.channel.peer) + (" (connection closed)" if comp.channel.closed else "")
        record = server.state.comps.get(comp.comp_id)
        running, done = (len(record.running), record.jobs_done) if record else (0, 0)
        lines.append(f"  computation {comp.name} ({comp.comp_id}) from client {client}: "
                     f"{running} running, {done} done")
    if server.options.serve:
        lines.append(f"  computations served: {server._served} of {server.options.serve}")
    return lines
