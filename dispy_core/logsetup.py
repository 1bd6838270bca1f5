"""Logging: the library leaves it to the program; dispy's own programs log in one format.

A client program's ``JobCluster`` is library code: it never configures the root logger, so the
program's own ``logging.basicConfig`` (before or after) takes effect. The ``dispy`` logger has a
``NullHandler`` (:func:`quiet_library_logger`). ``JobCluster(loglevel=...)``, the original's way to
see dispy's messages, still works: an explicit level sets the ``dispy`` logger's level and, while the
program has configured no logging, prints dispy's records to stderr (:func:`show_library_records`).

The servers (dispynode, dispyscheduler, dispynetrelay) and dispy_cmd are programs: they configure
the root logger with :func:`configure_program`, one line per record in :data:`TEXT_FORMAT`, or one
JSON object per line with ``--log_json`` or ``DISPY_LOG_FORMAT=json`` (the node's host and job
processes inherit that variable, and log in the same form: ``dispy_plugins.executor_host.lazylog``).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, TextIO

LIBRARY_LOGGER = "dispy"

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""Every program's log line: time, logger, level, message (the node's host and job processes add
``[host PID]`` / ``[job PID]`` before the message)."""

PROGRAM_HANDLER = "dispy-program"
"""The name of the root handler :func:`configure_program` adds."""

FORMAT_ENV = "DISPY_LOG_FORMAT"
"""``json``: programs log JSON lines; ``text`` (or unset): :data:`TEXT_FORMAT`."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, local time with its offset), ``level``,
    ``logger``, ``message``, ``pid``, and ``exception`` (the traceback text) when there is one; records
    with a ``role`` attribute (the node's host and job processes) carry it too."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created).astimezone()
        entry: dict[str, Any] = {"time": created.isoformat(timespec="milliseconds"), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage(), "pid": record.process}
        role = getattr(record, "role", None)
        if role:
            entry["role"] = role
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_wanted(flag: bool = False, env: dict[str, str] | None = None) -> bool:
    """Whether to log JSON: the program's ``--log_json``, else ``$DISPY_LOG_FORMAT``."""
    value = (os.environ if env is None else env).get(FORMAT_ENV, "")
    return flag or value.strip().lower() == "json"


def check_format_env(env: dict[str, str] | None = None) -> str | None:
    """A one-line complaint when ``$DISPY_LOG_FORMAT`` holds something other than ``json`` or ``text``."""
    value = (os.environ if env is None else env).get(FORMAT_ENV, "").strip().lower()
    if value in ("", "json", "text"):
        return None
    return f"${FORMAT_ENV} must be 'json' or 'text', not {value!r}; logging text"


def formatter(json_logs: bool, fmt: str = TEXT_FORMAT) -> logging.Formatter:
    return JsonFormatter() if json_logs else logging.Formatter(fmt)


def configure_program(debug: bool = False, json_logs: bool = False, level: int | None = None,
                      stream: TextIO | None = None) -> None:
    """A program's logging: one handler on the root logger, to stderr (at INFO; DEBUG with ``debug``).

    ``json_logs`` (``--log_json``) or ``$DISPY_LOG_FORMAT=json`` choose JSON lines; the choice is put in
    the environment so that processes the program starts (a node's host and job processes) log alike.
    """
    use_json = json_wanted(json_logs)
    if use_json:
        os.environ[FORMAT_ENV] = "json"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(use_json))
    handler.set_name(PROGRAM_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == PROGRAM_HANDLER]:  # called again: replaced, not doubled
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else logging.DEBUG if debug else logging.INFO)
    complaint = check_format_env()
    if complaint:
        logging.getLogger(LIBRARY_LOGGER).warning("%s", complaint)


def quiet_library_logger() -> logging.Logger:
    """The ``dispy`` logger with a ``NullHandler`` (once): a library's records go only where the program
    sends them (and Python's last-resort printing of warnings to stderr does not apply)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if not any(type(h) is logging.NullHandler for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    return logger


class _UntilConfigured(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints to the current ``sys.stderr`` while the root logger has no handler; once the program has
    configured logging, its handlers get dispy's records (by propagation) and this one stays silent,
    so nothing is printed twice."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(TEXT_FORMAT))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def show_library_records(level: int) -> None:
    """``JobCluster(loglevel=LEVEL)``: the ``dispy`` logger at ``level``, and its records shown on
    stderr while the program has configured no logging itself (the original printed them)."""
    logger = quiet_library_logger()
    logger.setLevel(level)
    if not any(isinstance(h, _UntilConfigured) for h in logger.handlers):
        logger.addHandler(_UntilConfigured())
