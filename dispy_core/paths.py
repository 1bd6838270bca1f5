"""Joining paths that come from peers, so they can never escape their directory."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from dispy_core.errors import UnsafePathError

MAX_PATH_LENGTH = 4096
MAX_PATH_DEPTH = 128
"""Bounds on a path from a peer: beyond them no file system takes it (and making its parents recursed)."""


def check_relpath(relpath: str) -> PurePosixPath:
    """A relative, normalized POSIX path with no ``..``, no drive and no absolute root, else UnsafePathError."""
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath:
        raise UnsafePathError(f"invalid path from peer: {relpath!r}")
    if len(relpath) > MAX_PATH_LENGTH or relpath.count("/") + relpath.count("\\") >= MAX_PATH_DEPTH:
        raise UnsafePathError(f"path from peer too long or too deep (at most {MAX_PATH_LENGTH} characters and "
                              f"{MAX_PATH_DEPTH} components): {relpath[:80]!r}...")
    if relpath.startswith(("/", "\\")) or PureWindowsPath(relpath).drive:
        raise UnsafePathError(f"absolute path from peer refused: {relpath!r}")
    parts = PurePosixPath(relpath.replace("\\", "/")).parts
    if any(part in ("..", "") for part in parts) or not parts:
        raise UnsafePathError(f"path from peer escapes its directory: {relpath!r}")
    clean = [p for p in parts if p != "."]
    if not clean:
        raise UnsafePathError(f"invalid path from peer: {relpath!r}")
    return PurePosixPath(*clean)


def safe_join(base: Path, relpath: str) -> Path:
    """``base / relpath`` after checking that no component (symlinks included) leads outside ``base``."""
    rel = check_relpath(relpath)
    base_real = Path(os.path.realpath(base))
    target = base_real.joinpath(*rel.parts)
    # Resolve what exists of the parent chain: a symlinked directory inside base must not lead out.
    resolved_parent = Path(os.path.realpath(target.parent))
    if not resolved_parent.is_relative_to(base_real):
        raise UnsafePathError(f"path from peer leads outside its directory through a symlink: {relpath!r}")
    if target.is_symlink():
        raise UnsafePathError(f"refusing to write through a symlink: {relpath!r}")
    return target
