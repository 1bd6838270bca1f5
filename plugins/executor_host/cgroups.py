"""A cgroup (v2) per computation, where the node may make one: the backstop of job containment.

The node puts each computation's host process into a group of its own before the host forks
anything, so the zygote, every job process and everything they start are born inside it; leaving a
cgroup takes write access to a common ancestor's ``cgroup.procs``, which a job of a node that is not
root lacks. When the computation ends (closed, its host dead, the node stopped), the node kills the
whole group at once (``cgroup.kill``, Linux 5.14+; before that, each process in ``cgroup.procs`` until
none is left) and removes it. That covers what the chain of subreapers (:mod:`containment`) cannot:
a host and its zygote killed together, whose jobs' processes would otherwise go to init.

The group is made beside the node's own, in the unified (v2) hierarchy, which a hybrid system mounts
at ``/sys/fs/cgroup/unified``. No controller is needed (nor enabled): only membership and kill. Where
there is no writable v2 hierarchy (many containers, nodes that are not root without delegation),
:meth:`CgroupRoot.find` says so and nothing is made. Groups that a crashed node left behind (named
after a pid that no longer runs) are killed and removed when the next node finds the place.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import time
from pathlib import Path

PREFIX = "dispy-"
_STALE = re.compile(rf"^{PREFIX}(\d+)-\d+$")


def _unified_mount() -> Path | None:
    """Where the v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid systems)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and len(fields) >= 5 and fields[3] == "/":
            return Path(fields[4])
    return None


def _own_group() -> str | None:
    """This process's v2 group path ("/..."), from ``/proc/self/cgroup``'s ``0::`` line."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


class Cgroup:
    """One computation's group."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, pid: int) -> None:
        """Move ``pid`` in (before it forks: its children are then born inside); raises ``OSError``."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        try:
            return [int(word) for word in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process in the group (all at once where the kernel can)."""
        try:
            (self.path / "cgroup.kill").write_text("1\n")
            return
        except OSError:
            pass
        for _ in range(100):  # without cgroup.kill: a process may fork while we kill; repeat until none
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the group; False while processes are still leaving it."""
        try:
            self.path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False


_GROUPS = itertools.count(1)


class CgroupRoot:
    """Where this node makes its computations' groups: beside its own group."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    @classmethod
    def find(cls) -> tuple[CgroupRoot | None, str]:
        """The place, or None and why not (the reason is logged by the caller)."""
        mount, own = _unified_mount(), _own_group()
        if mount is None or own is None:
            return None, "no cgroup v2 hierarchy is mounted"
        parent = mount / own.lstrip("/")
        if not (parent / "cgroup.procs").is_file():
            return None, f"{parent} is not visible here"
        if not os.access(parent, os.W_OK):
            return None, f"{parent} is not writable (a container, or no delegation)"
        root = cls(parent)
        root.remove_stale()
        return root, ""

    def make(self) -> Cgroup | None:
        """A new, empty group; None if the kernel refuses (then containment works without it)."""
        path = self.parent / f"{PREFIX}{os.getpid()}-{next(_GROUPS)}"  # one count per process: several
        # executors in one process (simulated nodes, tests) must never pick the same name
        try:
            path.mkdir()
        except FileExistsError:  # a crashed node of this pid left it: take it over
            group = Cgroup(path)
            group.kill()
            return group
        except OSError:
            return None
        return Cgroup(path)

    def remove_stale(self) -> None:
        """Kill and remove the groups of nodes that are gone."""
        try:
            entries = list(self.parent.iterdir())
        except OSError:
            return
        for path in entries:
            match = _STALE.match(path.name)
            if match and int(match.group(1)) != os.getpid() and not _running(int(match.group(1))):
                group = Cgroup(path)
                group.kill()
                for _ in range(20):
                    if group.remove():
                        break
                    time.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
