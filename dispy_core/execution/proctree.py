"""Killing a job together with every process it started, and naming how a process ended.

Each job runs as the leader of its own session / process group, so one ``killpg`` reaches what it
forked even after the job itself is gone; a psutil snapshot of its descendants, taken while the job
still lives, catches processes that moved to a group of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil


def describe_wait_status(status: int) -> str:
    """``os.waitpid`` status as text, e.g. "exited with status 3", "killed by signal SIGSEGV"."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal_name(os.WTERMSIG(status))}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


def describe_returncode(code: int | None) -> str:
    """A ``Popen.returncode`` (negative = signal) as text."""
    if code is None:
        return "ended"
    if code < 0:
        return f"killed by signal {signal_name(-code)}"
    return f"exited with status {code}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def descendants(pid: int) -> list[psutil.Process]:
    """Processes started (transitively) by ``pid``; empty if it is gone."""
    import psutil  # only when killing: hosts that never kill stay lean and cheap to fork

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_process(pid: int, signum: int) -> bool:
    """Send ``signum`` to one process; False if it no longer exists."""
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False if the group is empty."""
    killpg = getattr(os, "killpg", None)
    if killpg is None:  # Windows: no groups; the job process only
        return signal_process(pgid, signum)
    try:
        killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_tree(pgid: int, known: list[psutil.Process] | None = None) -> None:
    """SIGKILL a job's process group and any remembered descendants that still run."""
    sigkill = getattr(signal, "SIGKILL", signal.SIGTERM)
    signal_group(pgid, sigkill)
    if not known:
        return
    import psutil

    for proc in known:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # also checks it is the same process (create time)
                proc.kill()
