"""Files both ways against real dispynode processes: cluster.send_file, dispy_job_depends,
dispy_send_file, and the limits and path checks on each side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

Factory = Callable[..., NodeProcess]


def read_file(relpath: str) -> str:
    with open(relpath) as handle:
        return handle.read()


def read_and_list(name: str) -> tuple[str, list[str]]:
    import os

    with open(name) as handle:
        return handle.read(), sorted(os.listdir("."))


def send_back(files: dict[str, str]) -> list[int]:
    import os

    codes = []
    for path, text in files.items():
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        codes.append(dispy_send_file(path))  # type: ignore[name-defined] # noqa: F821
    return codes


def ready(cluster: dispy.JobCluster) -> None:
    import time

    deadline = time.monotonic() + 20
    while not cluster.status()["nodes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.status()["nodes"]


def test_send_file_keeps_relative_directories(node: NodeProcess, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "client"
    (work / "data" / "part").mkdir(parents=True)
    (work / "data" / "part" / "a.txt").write_text("relative")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("absolute")
    monkeypatch.chdir(work)
    with dispy.JobCluster(read_file, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        ready(cluster)
        assert cluster.send_file("data/part/a.txt", "127.0.0.1") == 0
        assert cluster.send_file(str(work / "data" / "part" / "a.txt"), "127.0.0.1") == 0  # inside cwd: same
        assert cluster.send_file(str(outside), cluster.status()["nodes"][0]) == 0  # elsewhere: base name
        job = cluster.submit("data/part/a.txt")
        assert job is not None and job(timeout=20) == "relative", job.exception
        job = cluster.submit("elsewhere.txt")
        assert job is not None and job(timeout=20) == "absolute", job.exception
        assert cluster.send_file("missing.txt", "127.0.0.1") == -1
        assert cluster.send_file("data/part/a.txt", "192.0.2.9") == -1


def test_node_file_size_limit_reaches_the_sender(node_factory: Factory, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    node = node_factory("--max_file_size", "1k")
    small, big, huge = tmp_path / "small.bin", tmp_path / "big.bin", tmp_path / "huge.bin"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * 4096)
    huge.write_bytes(b"x" * (5 << 20))  # more than one chunk: refused at the first
    with dispy.JobCluster(read_file, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        ready(cluster)
        assert cluster.send_file(str(small), "127.0.0.1") == 0
        for path in (big, huge):
            caplog.clear()
            assert cluster.send_file(str(path), "127.0.0.1") == -1
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert any("max_file_size" in e and path.name in e for e in errors), errors
        job = cluster.submit("small.bin")  # the node and the cluster still work
        assert job is not None and job(timeout=20) == "x" * 100
        job = cluster.submit("small.bin", dispy_job_depends=[str(big)])
        assert job is not None and job(timeout=20) is None
        assert job.status == dispy.DispyJob.Cancelled and "max_file_size" in str(job.exception)


def test_job_depends_are_removed_after_the_job_even_without_cleanup(node: NodeProcess, tmp_path: Path) -> None:
    dep = tmp_path / "per_job.txt"
    dep.write_text("for one job")
    with dispy.JobCluster(read_and_list, nodes=["127.0.0.1"], dispy_port=node.base_port,
                          cleanup=False) as cluster:
        job = cluster.submit("per_job.txt", dispy_job_depends=[str(dep)])
        assert job is not None
        text, listing = job(timeout=20)
        assert text == "for one job" and "per_job.txt" in listing
        comp_dir = node.prefix / cluster.comp_id
        assert comp_dir.is_dir() and not (comp_dir / "per_job.txt").exists()
        job = cluster.submit("per_job.txt")  # gone for the next job too
        assert job is not None and job(timeout=20) is None and "FileNotFoundError" in str(job.exception)
    assert comp_dir.is_dir()  # cleanup=False keeps the computation's directory


def test_dispy_send_file_saves_under_the_client_directory(node: NodeProcess, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    work = tmp_path / "client"
    work.mkdir()
    victim = tmp_path / "outside"
    victim.mkdir()
    (work / "link").symlink_to(victim, target_is_directory=True)
    monkeypatch.chdir(work)
    absolute = str(tmp_path / "node_side_absolute.txt")
    with dispy.JobCluster(send_back, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit({"out/deep/result.txt": "kept its directories", absolute: "by base name",
                              "link/evil.txt": "must not land outside"})
        assert job is not None and job(timeout=20) == [0, 0, 0], job.exception
    assert (work / "out" / "deep" / "result.txt").read_text() == "kept its directories"
    assert (work / "node_side_absolute.txt").read_text() == "by base name"
    assert not (victim / "evil.txt").exists()
    assert any("link/evil.txt" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_client_max_file_size_refuses_big_files_from_jobs(node: NodeProcess, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dispy.config, "MaxFileSize", 10)
    with dispy.JobCluster(send_back, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit({"small.txt": "tiny", "big.txt": "x" * 100})
        assert job is not None and job(timeout=20) == [0, 0]
    assert (tmp_path / "small.txt").read_text() == "tiny"
    assert not (tmp_path / "big.txt").exists()
    assert any("MaxFileSize" in r.getMessage() for r in caplog.records)
