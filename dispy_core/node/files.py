"""A computation's files on the node: chunks written in order inside its directory, removed with it.

Every path comes from a peer, so every path goes through ``safe_join``; sizes are checked against the
declared size and the node's ``--max_file_size`` before anything is written.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
from pathlib import Path
from typing import IO

from dispy_core.paths import safe_join
from dispy_core.protocol import messages as m

__all__ = ["MAX_OPEN_TRANSFERS", "ComputationFiles"]

MAX_OPEN_TRANSFERS = 64
"""Files of one computation being received at once (each holds an open file): a client sends at most
``client.connections.TRANSFERS_PER_NODE`` at a time; a peer that opens more is refused, not served."""


class ComputationFiles:
    """The files of one computation: those being received, and those that belong to one job."""

    def __init__(self, work_dir: Path, max_file_size: int = 0, existing: set[str] | None = None) -> None:
        self.work_dir = work_dir
        self.max_file_size = max_file_size
        self._open: dict[str, tuple[IO[bytes], int, int]] = {}  # relpath -> (handle, size, written)
        self._per_job: dict[int, list[Path]] = {}
        self.existing = existing
        """What the directory held before this computation (a ``dest_path`` an earlier one used): kept at
        close. None: the directory is this computation's own."""

    def write(self, msg: m.FileChunk) -> bool:
        """Write one chunk; True once the file is complete. Raises UnsafePathError, OSError, ValueError;
        the file being received is then dropped."""
        try:
            return self._write(msg)
        except BaseException:
            self._abandon(msg.relpath)
            raise

    def _write(self, msg: m.FileChunk) -> bool:
        limit = self.max_file_size
        if limit and msg.size > limit:
            raise ValueError(f"file {msg.relpath!r} is {msg.size} bytes, above this node's "
                             f"max_file_size of {limit} bytes")
        if msg.size < 0 or msg.offset < 0 or msg.offset + len(msg.data) > msg.size:
            raise ValueError(f"file {msg.relpath!r}: chunk outside the declared size {msg.size}")
        entry = self._open.get(msg.relpath)
        if msg.offset == 0:
            if entry is not None:
                entry[0].close()
            elif len(self._open) >= MAX_OPEN_TRANSFERS:
                raise ValueError(f"file {msg.relpath!r} refused: {MAX_OPEN_TRANSFERS} files of this computation are "
                                 f"being received already (finish one first)")
            target = safe_join(self.work_dir, msg.relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle: IO[bytes] = open(target, "wb")  # noqa: SIM115 - kept open across chunks
            entry = (handle, msg.size, 0)
            if msg.job_uid:
                self._per_job.setdefault(msg.job_uid, []).append(target)
        elif entry is None or entry[2] != msg.offset:
            raise ValueError(f"file {msg.relpath!r}: chunk at offset {msg.offset} out of order")
        handle, size, written = entry
        handle.write(msg.data)
        written += len(msg.data)
        if msg.last:
            handle.close()
            self._open.pop(msg.relpath, None)
            if written != size:
                raise ValueError(f"file {msg.relpath!r}: got {written} bytes, declared {size}")
            os.chmod(handle.name, msg.mode & 0o755 | 0o600)
            return True
        self._open[msg.relpath] = (handle, size, written)
        return False

    def _abandon(self, relpath: str) -> None:
        entry = self._open.pop(relpath, None)
        if entry is not None:
            entry[0].close()

    def job_done(self, job_uid: int) -> None:
        """A job's own files (``dispy_job_depends``) go with it, and so does the bytecode Python cached for
        those that are modules (else a later job's module of the same name and size could load it)."""
        for path in self._per_job.pop(job_uid, []):
            path.unlink(missing_ok=True)
            if path.suffix == ".py":
                _remove_bytecode(path)

    def remove(self, prefix: Path, remove_dir: bool) -> None:
        """Close what is half received; with ``remove_dir``, delete what this computation created (only
        under ``prefix``): its whole directory if it made it, else only what was not there before."""
        for handle, _, _ in self._open.values():
            handle.close()
        self._open.clear()
        if not remove_dir or not self.work_dir.is_relative_to(prefix) or self.work_dir == prefix:
            return
        if self.existing is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        for path in sorted(listing(self.work_dir) - self.existing, key=lambda p: p.count("/"), reverse=True):
            target = self.work_dir / path
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


LISTING_LIMIT = 100_000
"""Entries of a shared ``dest_path`` remembered at open; beyond, the rest count as existing (kept)."""


def listing(directory: Path) -> set[str]:
    """Relative paths of everything under ``directory`` (symlinks not followed), at most LISTING_LIMIT."""
    found: set[str] = set()
    for root, dirs, files in os.walk(directory):
        base = os.path.relpath(root, directory)
        for name in dirs + files:
            found.add(name if base == "." else f"{base}/{name}")
            if len(found) >= LISTING_LIMIT:
                return found
    return found


def _remove_bytecode(source: Path) -> None:
    """``__pycache__/<name>.<tag>*.pyc`` of a module file; ``__pycache__`` too once it is empty."""
    tag = sys.implementation.cache_tag
    cache = source.parent / "__pycache__"
    if tag is None or cache.is_symlink() or not cache.is_dir():
        return
    for compiled in cache.glob(f"{glob.escape(source.stem)}.{tag}*.pyc"):
        compiled.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cache.rmdir()  # only if empty: the computation's own modules may have theirs there
