"""A logger for host and job processes that imports :mod:`logging` only when something is logged.

``logging`` imports ``threading``, whose at-fork handlers make every fork of the host touch (and so
copy) many more pages: on a slow VM that doubled the CPU cost of each job. Hosts that log nothing
never pay for it.

Records go to the node's log: the stderr host and job processes inherit from the node, through a
duplicate of fd 2 taken at their start (:func:`keep_log_fd`), because while a job runs its fds 1 and 2
are pipes into the job's own ``stdout``/``stderr``. So ``dispynode_logger`` in a job writes to the
node's log, not into what the job captures (and the first record may come from inside a job).
Each line names its process, "host" or "job", from the record's pid: a forked job needs no call (and
touches no page) to be labelled right, even with handlers the host configured before the fork. Lines
have the node's own format (``dispy_core.logsetup``), the role and pid ahead of the message; JSON
lines, with ``role``, when the node logs JSON (``$DISPY_LOG_FORMAT``, which the node sets for its
children when started with ``--log_json``).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

HOST_PID = 0
"""The computation host's pid (``mark_host``); records from any other process are a job's."""

_LOG_FD = -1
"""A duplicate of the node's log (fd 2 at the process's start), see :func:`keep_log_fd`."""


def keep_log_fd() -> None:
    """Remember where the node's log is, before a job's output capture takes fds 1 and 2."""
    global _LOG_FD
    if _LOG_FD < 0:
        try:
            _LOG_FD = os.dup(2)
        except OSError:
            pass


def _log_stream() -> Any:
    if _LOG_FD >= 0:
        return io.TextIOWrapper(io.FileIO(_LOG_FD, "w", closefd=False), encoding="utf-8",
                                errors="backslashreplace", line_buffering=True)
    return sys.__stderr__ or sys.stderr


class LazyLogger:
    """Stands in for ``logging.getLogger(name)``; the first attribute access creates the real one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import logging

            root = logging.getLogger()
            if not root.handlers:
                handler = logging.StreamHandler(_log_stream())
                handler.setFormatter(_formatter())
                root.addHandler(handler)
                root.setLevel(logging.INFO)
            self._logger = logging.getLogger(self._name)
        return getattr(self._logger, attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self._name}>"


def mark_host() -> None:
    """Called once by the host process, before it forks anything."""
    global HOST_PID
    HOST_PID = os.getpid()


def _formatter() -> Any:
    import logging

    from dispy_core import logsetup

    base = logsetup.formatter(logsetup.json_wanted(), ROLE_FORMAT)

    class RoleFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            record.role = "host" if record.process == HOST_PID else "job"
            return base.format(record)

    return RoleFormatter()


ROLE_FORMAT = "%(asctime)s %(name)s %(levelname)s [%(role)s %(process)d] %(message)s"
"""The node's line format (``dispy_core.logsetup.TEXT_FORMAT``) with the process's role and pid."""
