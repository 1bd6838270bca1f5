"""The parts of job isolation, one by one: job limits (parsing, the node's ceilings, the reasons given),
the host's output cap, a subreaper ending every process below it, and the cgroup per computation."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from dispy_core.config import Config
from dispy_core.errors import ConfigError, SetupError
from dispy_core.joblimits import check_job_limits, combine, describe, node_ceilings, parse_size, summary
from dispy_plugins.executor_fork.executor import ForkExecutor
from dispy_plugins.executor_host import cgroups, rlimits
from dispy_plugins.executor_host.capture import OUTPUT_CAP, TRUNCATED, Captured
from dispy_plugins.executor_host.cgroups import Cgroup, CgroupRoot


# --------------------------------------------------------------------------- job limits
@pytest.mark.parametrize(("given", "size"), [(65536, 65536), ("512m", 512 << 20), ("2G", 2 << 30),
                                              ("1.5g", 3 << 29), ("100 KiB", 100 << 10), ("4096", 4096)])
def test_sizes(given: Any, size: int) -> None:
    assert parse_size(given) == size


def test_check_job_limits_gives_base_units_and_names_what_is_wrong() -> None:
    assert check_job_limits(None) == {}
    assert check_job_limits({"memory": "1g", "cpu_time": 0.5, "open_files": 64}) == \
        {"memory": 1 << 30, "cpu_time": 1, "open_files": 64}
    assert check_job_limits({"memory": None}) == {}
    for bad, words in (({"mem": 1}, "unknown keys mem; the keys are memory, cpu_time, open_files"),
                       ({"memory": "lots"}, "size such as '512m'"), ({"memory": 1024}, "at least 16 MiB"),
                       ({"cpu_time": -1}, "cpu_time must be a positive number"),
                       ({"cpu_time": True}, "cpu_time must be a positive number"),
                       ({"open_files": 8}, "at least 16"), ([("memory", 1)], "must be a dict")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            check_job_limits(bad)


def test_the_node_is_the_ceiling() -> None:
    ceilings = node_ceilings(Config(role="node", settings={"executor": {"max_memory": "1g", "max_cpu_time": 10}}).get)
    assert ceilings == {"memory": 1 << 30, "cpu_time": 10}
    assert combine({}, ceilings) == ceilings  # a client that asks nothing gets the node's
    assert combine({"memory": 2 << 30, "cpu_time": 5, "open_files": 100}, ceilings) == \
        {"memory": 1 << 30, "cpu_time": 5, "open_files": 100}
    with pytest.raises(ValueError, match="executor.max_open_files: open_files"):
        node_ceilings(Config(role="node", settings={"executor": {"max_open_files": "many"}}).get)
    with pytest.raises(ConfigError, match="executor.max_memory"):
        ForkExecutor(Config(role="node", settings={"executor": {"max_memory": "x"}}))


def test_an_executor_refuses_bad_limits_from_a_client_and_bounds_good_ones(tmp_path: Path) -> None:
    from test_executor_host_executors import make_spec

    ex = ForkExecutor(Config(role="node", settings={"executor": {"max_cpu_time": 5}}))
    spec = make_spec(tmp_path, extra={"job_limits": {"cpu_time": 60, "memory": "64m"}})
    assert ex._limits(spec) == {"cpu_time": 5, "memory": 64 << 20}
    with pytest.raises(SetupError, match="unknown keys"):
        ex._limits(make_spec(tmp_path, extra={"job_limits": {"wall_time": 1}}))


def test_limits_read_as_people_write_them() -> None:
    assert [describe("memory", v) for v in (512 << 20, 1 << 30, 3 << 29, 100 << 10, 10)] == \
        ["512 MiB", "1 GiB", "1.5 GiB", "100 KiB", "10 bytes"]
    assert summary({"open_files": 64, "memory": 256 << 20, "cpu_time": 2}) == \
        "memory 256 MiB, CPU time 2 s, open files 64"


def test_exceeded_limits_are_named() -> None:
    limits = {"memory": 256 << 20, "open_files": 64, "cpu_time": 3}
    assert rlimits.explain_exception(MemoryError(), limits) == "job exceeded its memory limit of 256 MiB\n"
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise RuntimeError("could not read the data") from exc
    except RuntimeError as exc:
        assert rlimits.explain_exception(exc, limits) == "job exceeded its limit of 64 open files\n"
    assert rlimits.explain_exception(MemoryError(), {}) == ""
    assert rlimits.explain_exception(ValueError(), limits) == ""
    assert rlimits.explain_signal(signal.SIGXCPU, limits) == "job exceeded its CPU time limit of 3 s"
    assert rlimits.explain_signal(signal.SIGSEGV, limits) == ""


# --------------------------------------------------------------------------- output
def test_the_host_keeps_the_first_bytes_of_each_stream_and_says_it_cut() -> None:
    buf = Captured()
    buf.add(b"a" * (OUTPUT_CAP - 3))
    buf.add(b"bcdef")
    buf.add(b"never")
    data = buf.take()
    assert data == b"a" * (OUTPUT_CAP - 3) + b"bcd" + TRUNCATED
    assert buf.take() == b""  # empty again: the next job of a reused process starts afresh
    buf.add(b"fd")
    assert buf.take(b"print ") == b"print fd"


# --------------------------------------------------------------------------- subreapers
SUBREAPER = textwrap.dedent("""
    import os, subprocess, sys, time
    from dispy_plugins.executor_host import containment
    assert containment.become_subreaper()
    child = subprocess.Popen(["sleep", "1000"])
    orphan = int(subprocess.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], capture_output=True,
                                text=True).stdout)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(1000)
        os._exit(0)
    daemon = int(os.read(r, 64))
    below = containment.descendants(os.getpid())
    assert {child.pid, orphan, daemon} <= set(below), (below, child.pid, orphan, daemon)
    ended = containment.end_descendants()
    print(child.pid, orphan, daemon, ended, len(containment.descendants(os.getpid())))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")
def test_a_subreaper_ends_everything_below_it_even_what_left_its_tree() -> None:
    out = subprocess.run([sys.executable, "-c", SUBREAPER], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    child, orphan, daemon, ended, left = map(int, out.stdout.split())
    assert ended >= 3 and left == 0
    for pid in (child, orphan, daemon):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --------------------------------------------------------------------------- cgroups
def test_no_cgroup_where_there_is_no_v2_hierarchy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_unified_mount", lambda: None)
    root, why = CgroupRoot.find()
    assert root is None and "no cgroup v2 hierarchy" in why


@pytest.fixture
def cgroup_root() -> CgroupRoot:
    root, why = CgroupRoot.find()
    if root is None:
        pytest.skip(f"no cgroup here: {why}")
    return root


def test_a_group_holds_what_its_member_starts_and_is_killed_whole(cgroup_root: CgroupRoot) -> None:
    group = cgroup_root.make()
    assert group is not None
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time\n"
                               "subprocess.Popen(['sleep', '1000'], start_new_session=True)\ntime.sleep(1000)"])
    try:
        group.add(parent.pid)
        deadline = time.monotonic() + 10
        while len(group.pids()) < 2 and time.monotonic() < deadline:  # the session-leaving child is in it too
            time.sleep(0.02)
        members = group.pids()
        assert parent.pid in members and len(members) == 2
        group.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5
        while not group.remove() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not group.path.exists()
    finally:
        parent.kill()
        parent.wait(5)
        group.kill()
        group.remove()


def test_groups_of_a_node_that_is_gone_are_removed(cgroup_root: CgroupRoot) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Cgroup(cgroup_root.parent / f"{cgroups.PREFIX}{dead.pid}-1")
    stale.path.mkdir()
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        stale.add(sleeper.pid)
        CgroupRoot.find()
        assert sleeper.wait(5) == -signal.SIGKILL
        assert not stale.path.exists()
    finally:
        sleeper.kill()
        sleeper.wait(5)
        stale.remove()
