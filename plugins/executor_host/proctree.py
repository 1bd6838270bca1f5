"""Killing a job together with every process it started, and naming how a process ended.

Each job runs as the leader of its own session / process group, so one ``killpg`` reaches what it
forked even after the job itself is gone; a psutil snapshot of its descendants, taken while the job
still lives, catches processes that moved to a group of their own (``setsid``). A process that also
left the job's tree (its parent exited: a daemonizing double fork) is found by the environment marker
every job sets (``JOB_ENV``) and every program it executes inherits. All of this runs only when a job
is cancelled or killed, never on the per-job path.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

JOB_ENV = "DISPY_JOB_TOKEN"
"""Environment variable naming the job a process belongs to (``job_token``)."""


def job_token(host_pid: int, uid: int) -> str:
    """The marker of job ``uid`` of the host ``host_pid`` (unique while that host lives)."""
    return f"{host_marker(host_pid)}{uid}"


def host_marker(host_pid: int) -> str:
    """What the markers of every job of the host ``host_pid`` start with (see :func:`marked`)."""
    return f"{host_pid}:"


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


def marked(token: str, prefix: bool = False) -> list[psutil.Process]:
    """This user's processes whose environment carries ``token`` (programs a job started); with
    ``prefix``, any marker starting with it (every job of one host: :func:`host_marker`)."""
    import psutil

    if not token:
        return []
    me, uid = os.getpid(), os.getuid() if hasattr(os, "getuid") else None
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or (uid is not None and proc.uids().real != uid):
                continue
            mark = proc.environ().get(JOB_ENV)
            if mark is not None and (mark.startswith(token) if prefix else mark == token):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def job_processes(pid: int, token: str, known: list[psutil.Process]) -> list[psutil.Process]:
    """``known`` plus what the job started since: its descendants and the processes marked with its
    token; each process once, the list in place so that later rounds keep earlier finds."""
    pids = {p.pid for p in known}
    for proc in descendants(pid) + marked(token):
        if proc.pid not in pids and proc.pid != pid:
            pids.add(proc.pid)
            known.append(proc)
    return known


def signal_tree(pgid: int, known: list[psutil.Process], signum: int) -> None:
    """Send ``signum`` to a job's process group and to every remembered process that still runs."""
    import psutil

    signal_group(pgid, signum)
    for proc in known:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # also checks it is the same process (create time)
                proc.send_signal(signum)


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
    """SIGKILL a job's process group and any remembered processes that still run."""
    sigkill = getattr(signal, "SIGKILL", signal.SIGTERM)
    if known:
        signal_tree(pgid, known, sigkill)
    else:
        signal_group(pgid, sigkill)
