"""Files between client and nodes: where a sent file lands, and safely saving files jobs send back."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from dispy_core.client.computation import FileDepend
from dispy_core.errors import UnsafePathError
from dispy_core.paths import check_relpath, safe_join


def send_file_depend(path: str | os.PathLike[str], cwd: str | None = None) -> FileDepend:
    """What ``cluster.send_file(path)`` sends: the file, under the same relative path on the node.

    A relative path keeps its directories (``data/part1.csv`` lands in ``data/`` of the computation's
    directory); an absolute path inside the current directory is taken relative to it; any other path
    (absolute elsewhere, or leading out with ``..``) lands by its base name, as the original did.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a readable file")
    cwd = os.path.abspath(cwd or os.getcwd())
    full = os.path.abspath(path)
    relpath = os.path.basename(full)
    if os.path.commonpath([full, cwd]) == cwd and full != cwd:
        candidate = PurePosixPath(*Path(os.path.relpath(full, cwd)).parts).as_posix()
        try:
            relpath = check_relpath(candidate).as_posix()
        except UnsafePathError:
            pass
    stat = os.stat(full)
    return FileDepend(full, relpath, stat.st_size, stat.st_mode & 0o777)


def save_job_file(base: str | os.PathLike[str], relpath: str, data: bytes, max_size: int = 0) -> Path:
    """Save a file a job sent (``dispy_send_file``) under ``base``, keeping its relative path.

    Refuses (UnsafePathError / ValueError) paths that are absolute, contain ``..`` or lead through a
    symlink out of ``base``, and files above ``max_size`` bytes (0: no limit).
    """
    if max_size and len(data) > max_size:
        raise ValueError(f"file {relpath!r} is {len(data)} bytes, above dispy.config.MaxFileSize ({max_size})")
    target = safe_join(Path(base), relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = safe_join(Path(base), relpath)  # again: a directory made above must not have raced a symlink in
    tmp = target.with_name(f".{target.name}.dispy-partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, target)
    return target
