"""Where files land: cluster.send_file's relative paths and files jobs send back (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispy_core.client.files import save_job_file, send_file_depend
from dispy_core.errors import UnsafePathError


def test_send_file_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "d" / "e").mkdir(parents=True)
    (work / "d" / "e" / "f.txt").write_text("x")
    (tmp_path / "out.txt").write_text("y")
    monkeypatch.chdir(work)
    assert send_file_depend("d/e/f.txt").relpath == "d/e/f.txt"
    assert send_file_depend("./d/../d/e/f.txt").relpath == "d/e/f.txt"
    assert send_file_depend(str(work / "d" / "e" / "f.txt")).relpath == "d/e/f.txt"
    assert send_file_depend("../out.txt").relpath == "out.txt"
    assert send_file_depend(str(tmp_path / "out.txt")).relpath == "out.txt"
    dep = send_file_depend("d/e/f.txt")
    assert dep.size == 1 and os.path.isabs(dep.path)
    with pytest.raises(ValueError):
        send_file_depend("d")


def test_saving_refuses_escapes_and_big_files(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    (base / "link").symlink_to(outside, target_is_directory=True)
    (base / "file_link").symlink_to(outside / "target.txt")
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b", "", "link/x.txt", "file_link", "C:\\x"):
        with pytest.raises(UnsafePathError):
            save_job_file(base, bad, b"data")
    assert os.listdir(outside) == []
    with pytest.raises(ValueError, match="MaxFileSize"):
        save_job_file(base, "big.bin", b"x" * 11, max_size=10)
    assert save_job_file(base, "ok/./fine.txt", b"data").read_bytes() == b"data"
    assert save_job_file(base, "ok/fine.txt", b"new").read_bytes() == b"new"
    assert sorted(os.listdir(base / "ok")) == ["fine.txt"]  # no partial file left behind
