"""A job's own depends (``dispy_job_depends``) in its process: installed before its arguments are loaded,
removed after the job.

They go where a computation's depends go (the computation's ``__main__`` namespace), so the computation
sees them as globals, and arguments that are instances of their classes load. With ``jobs_per_process``
above 1 the process then runs further jobs, which must not see them: removing puts back every name
installing added or replaced, unless the job itself set that name again (what a job does to its
globals stays, as ``jobs_per_process`` documents), and drops the job's modules from ``sys.modules``
(their files leave with the job; the node removes them).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from dispy_core.jobargs import JobDepends
from dispy_plugins.executor_host import namespace

__all__ = ["Installed", "install"]

_MISSING = object()


class Installed:
    """What one job's depends changed in the namespace, to undo after the job."""

    __slots__ = ("ns", "before", "added", "modules", "work_dir")

    def __init__(self, ns: dict[str, Any], before: dict[str, Any], modules: tuple[str, ...], work_dir: str) -> None:
        self.ns = ns
        self.before = before  # the namespace as it was (a shallow copy)
        self.added: dict[str, Any] = {}  # name -> what installing put there
        self.modules = modules
        self.work_dir = work_dir

    def record(self) -> None:
        before, ns = self.before, self.ns
        self.added = {key: value for key, value in ns.items() if before.get(key, _MISSING) is not value}

    def remove(self) -> None:
        """Undo what installing did; names the job set itself since are left as the job left them."""
        ns, before = self.ns, self.before
        for key, value in self.added.items():
            if ns.get(key, _MISSING) is not value:
                continue
            if key in before:
                ns[key] = before[key]
            else:
                del ns[key]
        self.added = {}
        forget_modules(self.modules, self.work_dir)


def install(own: JobDepends, serializer: Any, ns: dict[str, Any], work_dir: str) -> Installed:
    """Install a job's code into ``ns`` (functions re-bound to it, as a computation's are); on failure,
    nothing of it stays."""
    installed = Installed(ns, dict(ns), own.modules, work_dir)
    try:
        if own.modules:
            forget_modules(own.modules, work_dir)  # a module of that name an earlier job of this process left
            importlib.invalidate_caches()  # its file has just arrived: no finder may go by an older listing
        namespace.install_depends_code(own.code, serializer, ns)
        namespace.rebind_namespace(ns)
    except BaseException:
        installed.record()
        installed.remove()
        raise
    installed.record()
    return installed


def forget_modules(names: tuple[str, ...], work_dir: str) -> None:
    """Drop the modules of those names that were loaded from the computation's directory (and only
    those: a module of the same name from elsewhere is not the job's)."""
    root = os.path.realpath(work_dir)
    for name in names:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        try:
            inside = os.path.commonpath([os.path.realpath(path), root]) == root
        except ValueError:  # another drive (Windows)
            inside = False
        if inside:
            del sys.modules[name]
