"""The recover file: what a client sent where, so that ``recover_jobs`` can fetch results after a crash.

One line of JSON first (the computation, where its key and certificates are), then one line per
event, appended and written through at once (a killed process loses nothing it wrote)::

    N <job uid>                       jobs 1 to uid were submitted (written with each send and each second)
    J <job uid> <JSON id>             the job's ``id``, when the program set one (``submit_job_id``)
    S <node ip:port> <job uid> ...    jobs sent to that node (a later S for a job supersedes)
    D <job uid>                       the job's final status reached the program

A job is only marked done once the program's callbacks for it have run, and the node forgets a result
only when the client acknowledges it after that mark (``ResultsAck``): whatever instant the client dies
at, each result is either in the program's hands or still on its node.

The file holds the key derived from the secret (``secret_key``), never the secret; with it, whoever
can read the file can talk to the nodes as this client, so it is created readable by its owner only.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dispy_core.errors import DispyError

log = logging.getLogger("dispy")

__all__ = ["RECOVER_PREFIX", "RecoverLog", "RecoverRecord", "default_recover_file", "latest_recover_file",
           "read_recover_file"]

RECOVER_PREFIX = "_dispy_"
FORMAT = 1


def default_recover_file(now: float | None = None) -> str:
    """``_dispy_YYYYMMDDHHMMSS`` in the current directory (the original's name)."""
    return RECOVER_PREFIX + time.strftime("%Y%m%d%H%M%S", time.localtime(now))


def latest_recover_file(directory: str = ".") -> str:
    """The most recently written ``_dispy_*`` file: ``recover_jobs()`` without a file name."""
    candidates = [p for p in glob.glob(os.path.join(directory, RECOVER_PREFIX + "*")) if os.path.isfile(p)]
    if not candidates:
        raise DispyError(f"no recover file ({RECOVER_PREFIX}*) in {os.path.abspath(directory)}")
    return max(candidates, key=os.path.getmtime)


class RecoverLog:
    """The writing side, one per cluster: every call writes through (no buffering to lose)."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        base, suffix = path, 1
        while True:  # two clusters started in the same second get distinct files
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                break
            except FileExistsError:
                suffix += 1
                if suffix > 1000:
                    raise
                self.path = f"{base}.{suffix}"
        self._lock = threading.Lock()
        self._write(json.dumps({"dispy_recover": FORMAT, **header}, sort_keys=True) + "\n")

    @classmethod
    def open(cls, path: str | None, header: dict[str, Any]) -> RecoverLog | None:
        """The log, or None (with a WARNING) when the file cannot be made: the cluster runs without one."""
        target = path or default_recover_file()
        try:
            return cls(target, header)
        except OSError as exc:
            log.warning("cannot create recover file %s (%s): recover_jobs will not be able to recover this "
                        "cluster's jobs", target, exc)
            return None

    def submitted(self, last_uid: int, ids: list[tuple[int, Any]]) -> None:
        """Jobs up to ``last_uid`` were submitted; ``ids``: the program's own ids of some (``submit_job_id``),
        kept when they are plain values (as JSON, never pickled). One write for all."""
        lines = []
        for uid, job_id in ids:
            if isinstance(job_id, int | float | str) and not isinstance(job_id, bool):
                text = json.dumps(job_id)
                if len(text) <= 200:
                    lines.append(f"J {uid} {text}\n")
        lines.append(f"N {last_uid}\n")
        self._write("".join(lines))

    def sent(self, node_key: str, uids: list[int] | tuple[int, ...]) -> None:
        if uids:
            self._write(f"S {node_key} {' '.join(map(str, uids))}\n")

    def done(self, uid: int) -> None:
        self._write(f"D {uid}\n")

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, data)
            except OSError as exc:
                log.warning("recover file %s: %s; no longer written", self.path, exc)
                os.close(self._fd)
                self._fd = -1

    def close(self, remove: bool) -> None:
        """Stop writing; ``remove`` when nothing is left to recover (the cluster closed cleanly)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass


@dataclass
class RecoverRecord:
    """What a recover file says: the computation, and the jobs each node may still have."""

    path: str
    header: dict[str, Any]
    pending: dict[str, set[int]] = field(default_factory=dict)
    """By node: the jobs sent there that the program did not have."""
    unsent: set[int] = field(default_factory=set)
    """Jobs submitted and never sent to a node: they died with the client."""
    ids: dict[int, Any] = field(default_factory=dict)

    @property
    def comp_id(self) -> str:
        return str(self.header["comp_id"])

    def rewrite(self) -> None:
        """Keep only what is still pending (or remove the file when nothing is)."""
        if not any(self.pending.values()):
            try:
                os.unlink(self.path)
            except OSError:
                pass
            return
        temp = self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"dispy_recover": FORMAT, **self.header}, sort_keys=True) + "\n")
            for key, uids in self.pending.items():
                for uid in sorted(uids):
                    if uid in self.ids:
                        handle.write(f"J {uid} {json.dumps(self.ids[uid])}\n")
                if uids:
                    handle.write(f"S {key} {' '.join(map(str, sorted(uids)))}\n")
        os.replace(temp, self.path)


def read_recover_file(path: str) -> RecoverRecord:
    """Parse a recover file; DispyError naming the file and line when it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise DispyError(f"cannot read recover file {path}: {exc}") from exc
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("dispy_recover") != FORMAT or "comp_id" not in header:
        raise DispyError(f"{path} is not a dispy recover file (of format {FORMAT})")
    where: dict[int, str] = {}
    done: set[int] = set()
    ids: dict[int, Any] = {}
    last = 0
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(maxsplit=2) if line.startswith("J ") else line.split()
        try:
            if parts and parts[0] == "S" and len(parts) >= 3:
                for uid in map(int, parts[2:]):
                    where[uid] = parts[1]
            elif parts and parts[0] == "D" and len(parts) == 2:
                where.pop(int(parts[1]), None)
                done.add(int(parts[1]))
            elif parts and parts[0] == "N" and len(parts) == 2:
                last = max(last, int(parts[1]))
            elif parts and parts[0] == "J" and len(parts) == 3:
                ids[int(parts[1])] = json.loads(parts[2])
            elif parts:
                raise ValueError(line)
        except ValueError:
            if number == len(lines):  # the last line, cut short by the crash
                break
            raise DispyError(f"{path}, line {number}: not a recover record: {line[:80]!r}") from None
    record = RecoverRecord(path, header, ids=ids)
    for uid, key in where.items():
        record.pending.setdefault(key, set()).add(uid)
    record.unsent = set(range(1, last + 1)) - done - set(where)
    return record
