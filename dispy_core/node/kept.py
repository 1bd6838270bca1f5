"""Results a client has not acknowledged: kept so that a client that dies loses none (``recover_jobs``).

While the client is connected, each result it was sent stays in memory until the client acknowledges
it (``ResultsAck``, about once a second). When the client goes away without closing its computation,
those results, and the results of the jobs that end afterwards, go to disk, where ``recover_jobs``
finds them. Disk use is bounded for the whole node; the age, by the zombie interval (the computation
is closed then, and its kept results with it).

Files hold the message body of a ``JobResult`` (the wire codec: JSON and raw blobs), never a pickle:
the node does not load what it keeps.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dispy_core.errors import ProtocolError
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import decode_body, encode_body

log = logging.getLogger("dispy.node")

__all__ = ["KEPT_DIR", "KEPT_LIMIT", "DiskBudget", "KeptResults"]

KEPT_DIR = ".dispy-kept-results"
"""Under the node's directory prefix: one folder per computation that has results kept on disk."""
KEPT_LIMIT = 1 << 30
"""Bytes of kept results a node holds on disk in all (node config ``node.kept_results_limit``)."""


@dataclass
class DiskBudget:
    """The node-wide bound on bytes kept on disk, shared by its computations."""

    limit: int
    used: int = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


class KeptResults:
    """One computation's results not yet acknowledged by its client, in memory or on disk."""

    def __init__(self, directory: Path, budget: DiskBudget) -> None:
        self.directory = directory
        self.budget = budget
        self.sent: dict[int, m.JobResult] = {}
        """Sent on the client's connection, not acknowledged yet."""
        self.on_disk: dict[int, int] = {}
        """Job uid -> size of its file."""
        self.dropped: dict[int, str] = {}
        """Results that could not be kept, and why (told to ``recover_jobs``)."""

    @classmethod
    def found_on_disk(cls, directory: Path, budget: DiskBudget) -> KeptResults:
        """What an earlier run of the node left in ``directory`` (a node restarted after its client died)."""
        kept = cls(directory, budget)
        for path in directory.glob("*.result"):
            try:
                uid, size = int(path.stem), path.stat().st_size
            except (ValueError, OSError):
                continue
            budget.used += size
            kept.on_disk[uid] = size
        return kept

    def __len__(self) -> int:
        return len(self.sent) + len(self.on_disk)

    def uids(self) -> set[int]:
        return set(self.sent) | set(self.on_disk)

    def keep_sent(self, result: m.JobResult) -> None:
        self.sent[result.job_uid] = result

    def acknowledged(self, uids: list[int]) -> None:
        for uid in uids:
            self.sent.pop(uid, None)
            if uid in self.on_disk:
                self._unlink(uid)

    def store(self, result: m.JobResult) -> None:
        """Write ``result`` to disk, within the node's budget; beyond it the result is dropped, with a reason."""
        body = encode_body(result)
        if not self.budget.take(len(body)):
            reason = (f"not kept: the node's {self.budget.limit} bytes for kept results are used up "
                      f"(node config node.kept_results_limit)")
            log.warning("result of job %s (%d bytes) %s", result.job_uid, len(body), reason)
            self.dropped[result.job_uid] = reason
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._path(result.job_uid)
            with open(path, "wb") as handle:
                handle.write(body)
        except OSError as exc:
            self.budget.give(len(body))
            log.warning("result of job %s not kept: %s", result.job_uid, exc)
            self.dropped[result.job_uid] = f"not kept: {exc}"
            return
        self.on_disk[result.job_uid] = len(body)

    def spill(self) -> None:
        """The client is gone: what it was sent and did not acknowledge goes to disk."""
        sent, self.sent = self.sent, {}
        for result in sent.values():
            self.store(result)

    def load(self, uid: int) -> m.JobResult | None:
        """The result kept for ``uid`` (memory first, then disk); None when there is none (or it is unreadable)."""
        if uid in self.sent:
            return self.sent[uid]
        if uid not in self.on_disk:
            return None
        try:
            data = self._path(uid).read_bytes()
            result = decode_body(m.JobResult.CODE, data)
        except (OSError, ProtocolError) as exc:
            log.warning("kept result of job %s cannot be read: %s", uid, exc)
            self._unlink(uid)
            self.dropped[uid] = f"kept result unreadable: {exc}"
            return None
        assert isinstance(result, m.JobResult)
        return result

    def forget_except(self, wanted: set[int]) -> None:
        """Results the client did not ask for are ones it has (its acknowledgement was lost with it)."""
        for uid in [u for u in self.sent if u not in wanted]:
            del self.sent[uid]
        for uid in [u for u in self.on_disk if u not in wanted]:
            self._unlink(uid)

    def clear(self) -> None:
        self.sent.clear()
        for size in self.on_disk.values():
            self.budget.give(size)
        self.on_disk.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _unlink(self, uid: int) -> None:
        self.budget.give(self.on_disk.pop(uid, 0))
        try:
            os.unlink(self._path(uid))
        except OSError:
            pass

    def _path(self, uid: int) -> Path:
        return self.directory / f"{int(uid)}.result"
