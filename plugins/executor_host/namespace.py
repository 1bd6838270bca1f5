"""Building the namespace a computation runs in: its code, its depends, setup's globals, dispy's globals.

Runs only in host and job processes (it loads user code). Functions the client serialized by value
(dill, ``recurse=True``) arrive each with a private globals dict; they are re-bound to one shared
``__main__`` namespace so that globals set by ``setup`` are seen by the computation and by ``cleanup``
(as they were in the original dispy, where everything was exec'd in one namespace).
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dispy_core.computation import BLOB_FIELDS, Computation
from dispy_plugins.executor_host import runtime
from dispy_plugins.executor_host.lazylog import LazyLogger

if TYPE_CHECKING:
    from dispy_core.interfaces import ComputationSpec

logger = LazyLogger("dispynode")

_SKIP_GLOBALS = frozenset({"__builtins__", "__name__", "__doc__", "__package__", "__loader__", "__spec__",
                           "__file__", "__cached__"})


@dataclass(slots=True)
class CompInfo:
    """What a host or job process knows about its computation: the client's record of it and what the
    node adds (sent by the node in the init frame: the record's blobs, then the serializer's)."""

    computation: Computation
    work_dir: str
    serializer: str
    node_name: str = ""
    node_ip_addr: str = ""
    max_frame: int = 0
    serializer_blob: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    BLOBS: ClassVar[int] = len(BLOB_FIELDS) + 1
    """How many blobs the init frame has (a spawned job's init frame has one more: setup's globals)."""

    @classmethod
    def of(cls, spec: ComputationSpec, **node: Any) -> CompInfo:
        """The spec's record and node-side fields; ``node`` adds the executor's own (or replaces them)."""
        fields: dict[str, Any] = {"work_dir": str(spec.work_dir), "serializer": spec.serializer,
                                  "node_name": spec.node_name, "node_ip_addr": spec.node_ip_addr,
                                  "extra": dict(spec.extra)}
        return cls(spec.computation, **{**fields, **node})

    def to_frame(self) -> tuple[dict[str, Any], list[bytes]]:
        computation, blobs = self.computation.to_parts()
        header = {"op": "init", "computation": computation, "work_dir": self.work_dir, "serializer": self.serializer,
                  "node_name": self.node_name, "node_ip_addr": self.node_ip_addr, "max_frame": self.max_frame,
                  "extra": self.extra}
        return header, [*blobs, self.serializer_blob]

    @classmethod
    def from_frame(cls, header: dict[str, Any], blobs: list[Any]) -> CompInfo:
        """The init frame's info; ``blobs`` beyond :attr:`BLOBS` are the caller's."""
        n = len(BLOB_FIELDS)
        computation = Computation.from_parts(header["computation"], blobs[:n])
        return cls(computation, header["work_dir"], header["serializer"], header["node_name"],
                   header["node_ip_addr"], header["max_frame"], blobs[n], header["extra"])


def jobs_per_process(info: CompInfo) -> int:
    """How many jobs one job process runs before it exits (the node checked the client's value)."""
    value = info.extra.get("jobs_per_process", 1)
    return value if type(value) is int and value >= 1 else 1


def job_limits(info: CompInfo) -> dict[str, int]:
    """The limits each job gets (the node combined the client's with its own; see ``dispy_core.joblimits``)."""
    limits = info.extra.get("limits")
    if not isinstance(limits, dict):
        return {}
    return {k: v for k, v in limits.items() if type(k) is str and type(v) is int and v > 0}


def install_user_main() -> dict[str, Any]:
    """A fresh ``__main__`` module for user code (the host's own module must not leak into it)."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module.__dict__


def rebind(fn: Any, ns: dict[str, Any]) -> Any:
    """A by-value function with a private globals dict, re-created over ``ns`` (its globals merged in)."""
    if not isinstance(fn, types.FunctionType):
        return fn
    own = fn.__globals__
    if own is ns:
        return fn
    module = sys.modules.get(fn.__module__ or "")
    if module is not None and getattr(module, "__dict__", None) is own and fn.__module__ != "__main__":
        return fn  # a function of an importable module: leave it with its module
    for key, value in own.items():
        if key not in _SKIP_GLOBALS and key not in ns:
            ns[key] = value
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__dict__.update(fn.__dict__)
    new.__qualname__ = fn.__qualname__
    new.__annotations__ = fn.__annotations__
    new.__module__ = "__main__" if fn.__module__ in (None, "__main__") else fn.__module__
    new.__doc__ = fn.__doc__
    return new


def rebind_namespace(ns: dict[str, Any]) -> None:
    """Re-bind by-value functions that ended up as values in ``ns`` (helpers the computation calls)."""
    for _ in range(4):  # merging a helper may bring in further helpers
        changed = False
        for key, value in list(ns.items()):
            if isinstance(value, types.FunctionType) and value.__globals__ is not ns:
                new = rebind(value, ns)
                if new is not value:
                    ns[key] = new
                    changed = True
        if not changed:
            return


def install_depends(comp: Computation, serializer: Any, ns: dict[str, Any]) -> list[Any]:
    """Put the depends' functions/classes/modules into ``ns`` by ``__name__``.

    An element ``(name, obj)`` with a string ``name`` installs ``obj`` under that name (how a client
    names an instance); an instance without a name is only kept alive (loading it already defined its
    class) and is not installed.
    """
    return install_depends_code(comp.depends_code, serializer, ns)


def install_depends_code(depends_code: bytes, serializer: Any, ns: dict[str, Any]) -> list[Any]:
    """:func:`install_depends` for code in that format from elsewhere (a job's own ``dispy_job_depends``)."""
    if not depends_code:
        return []
    items = serializer.loads(depends_code)
    kept = []
    for item in items if isinstance(items, list | tuple) else [items]:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            ns[item[0]] = item[1]
        elif isinstance(getattr(item, "__name__", None), str):
            ns[item.__name__] = item
        else:
            kept.append(item)
            logger.debug("depends element of type %s has no name; not installed", type(item).__name__)
    return kept


def load_computation(comp: Computation, serializer: Any, ns: dict[str, Any]) -> Any:
    """The computation callable (None for programs): by value when Pythons match, else from source."""
    if comp.kind == "program":
        return None
    same_python = tuple(comp.py_version[:2]) == sys.version_info[:2]
    if comp.code and same_python and not (comp.source and comp.options.get("source_complete")):
        fn = serializer.loads(comp.code)
    elif comp.source:
        # The source path needs no dill in this process: forks of it stay small and cheap.
        modules = comp.options.get("source_modules") or {}
        if isinstance(modules, dict):
            for alias, module_name in modules.items():
                if isinstance(alias, str) and isinstance(module_name, str):
                    ns[alias] = importlib.import_module(module_name)
        filename, first_line = source_origin(comp)
        code = compile("\n" * (first_line - 1) + comp.source, filename, "exec")  # lines as in the client's file
        exec(code, ns)  # noqa: S102 - user code, by design
        fn = ns.get(comp.code_name)
        if fn is None:
            raise LookupError(f"the source of computation {comp.name!r} does not define {comp.code_name!r}")
    elif comp.code:
        # Bytecode of another Python version may crash the interpreter: refuse with the remedy instead.
        client = ".".join(map(str, comp.py_version)) if any(comp.py_version) else "unknown"
        raise ValueError(
            f"computation {comp.name!r} was sent as Python {client} bytecode without source code, and this node "
            f"runs Python {sys.version_info[0]}.{sys.version_info[1]}: define it with 'def' at module level so "
            f"its source travels too, or run the node with Python {client}")
    else:
        raise ValueError(f"computation {comp.name!r} has neither code nor source")
    register_source(comp)
    fn = rebind(fn, ns)
    if callable(fn) and getattr(fn, "__name__", None):
        ns.setdefault(fn.__name__, fn)
    rebind_namespace(ns)
    return fn


MAX_SOURCE_LINE = 1_000_000
"""A first line beyond this is not believed (the source then counts its lines from 1): the padding
that places the source at its line costs memory per line."""


def source_origin(comp: Computation) -> tuple[str, int]:
    """The file name and first line the client gave the computation's source (``options``: ``source_file``,
    ``source_line``); else a name of its own, from line 1."""
    filename, first_line = comp.options.get("source_file"), comp.options.get("source_line")
    if (isinstance(filename, str) and filename and "\0" not in filename and type(first_line) is int
            and 1 <= first_line <= MAX_SOURCE_LINE):
        return filename, first_line
    return f"<computation {comp.name}>", 1


def register_source(comp: Computation) -> None:
    """Let tracebacks show the computation's source lines though its file is not on this node: its lines
    go into :mod:`linecache` under the client's file name, placed at their lines in that file.

    When the file here holds that source at that line (on the client's own machine), the file as it is
    now goes in instead: it also shows the helpers the computation calls, even if the file is later
    removed or changed while jobs run.
    """
    if not comp.source:
        return
    import linecache

    filename, first_line = source_origin(comp)
    lines = io.StringIO(comp.source, newline=None).readlines()  # split where the compiler counts lines
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    on_disk = linecache.getlines(filename) if not filename.startswith("<") else []
    shown = [line.strip() for line in on_disk[first_line - 1:first_line - 1 + len(lines)]]
    padded = on_disk if shown == [line.strip() for line in lines] else ["\n"] * (first_line - 1) + lines
    # mtime None: linecache.checkcache leaves the entry alone (as for sources that came from a loader)
    linecache.cache[filename] = (sum(map(len, padded)), None, padded, filename)


def build_serializer(name: str, config: Any = None) -> Any:
    """The serializer named ``name``, made by its plugin (``dispy_make_serializer``) through a plugin
    manager of its own; ``config`` (the node's :class:`~dispy_core.config.Config`) lends its settings."""
    from dispy_core.config import Config
    from dispy_core.pluginmanager import DispyPluginManager

    base = config if isinstance(config, Config) else Config()
    return DispyPluginManager(base.replace(role="job", serializer=name)).make_serializer(name)


def serializer_blob(serializer: Any) -> bytes:
    """A serializer pickled for host and job processes (:func:`load_serializer`); empty if it cannot be."""
    import pickle

    try:
        return pickle.dumps(serializer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return b""


def load_serializer(info: CompInfo) -> Any:
    """The serializer the node-side executor had its plugin make (``info.serializer_blob``: the node
    builds it by name, pickles it and never loads anything back), else one built here by name.

    Host and job processes thus build no plugin manager, which would import stevedore and
    ``importlib.metadata`` and with them ``threading``: its at-fork handler then runs in every forked job
    (measured: fork + exit twice the CPU, some 20 more page faults per job), and a spawned interpreter
    would take twice as long to get ready (about 60 -> 120 ms, 90 more modules).
    """
    blob = info.serializer_blob
    if blob:
        import pickle

        serializer = pickle.loads(blob)  # from the node, this process's parent (or from its host)
        if getattr(serializer, "name", None) == info.serializer:
            return serializer
    return build_serializer(info.serializer)


def inject_globals(info: CompInfo, ns: dict[str, Any], fn: Any) -> None:
    """The names computation code uses without importing (os, sys, time and dispy's own)."""
    values: dict[str, Any] = {
        "os": os,
        "sys": sys,
        "time": time,
        "dispy_job_path": info.work_dir,
        "dispy_node_name": info.node_name,
        "dispy_node_ip_addr": info.node_ip_addr,
        "dispy_provisional_result": runtime.dispy_provisional_result,
        "dispy_send_file": runtime.dispy_send_file,
        "dispynode_logger": logger,
        "dispynode_shutdown": _dispynode_shutdown,
    }
    targets = [ns]
    fn_globals = getattr(fn, "__globals__", None)
    if isinstance(fn_globals, dict) and fn_globals is not ns:
        targets.append(fn_globals)
    for target in targets:
        for key, value in values.items():
            if key in ("os", "sys", "time"):
                target.setdefault(key, value)
            else:
                target[key] = value


shutdown_request: Callable[[], None] | None = None
"""Set by the host process: how code running there (setup, cleanup) reaches the node."""


def _dispynode_shutdown() -> None:
    """Ask the node to quit once its running jobs are done; it obliges only if started with
    ``--client_shutdown`` (else it logs a warning). A job asks over its own pipe, through the host."""
    channel = runtime._channel
    if channel is not None:
        channel.send({"op": "shutdown"}, [])
    elif shutdown_request is not None:
        shutdown_request()
    else:
        logger.warning("dispynode_shutdown() called outside a node; ignored")


_init_close: Any = None


def run_init_file(info: CompInfo, ns: dict[str, Any]) -> bool:
    """``dispynode --init FILE``: run the file and its ``init()``, then give ``ns`` the file's globals
    (names the computation defines itself win); False when the node has no init file."""
    global _init_close
    path = info.extra.get("init_file")
    if not isinstance(path, str) or not path:
        return False
    init_ns: dict[str, Any] = {"__name__": "__dispynode_init__", "__file__": path, "__builtins__": builtins}
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    exec(compile(source, path, "exec"), init_ns)  # noqa: S102 - the node operator's own code, by design
    init = init_ns.get("init")
    if callable(init):
        init()
    _init_close = init_ns.get("close")
    for key, value in init_ns.items():
        if key not in _SKIP_GLOBALS and key not in ("init", "close"):
            ns.setdefault(key, value)
    return True


def run_init_close() -> None:
    """The ``--init`` file's ``close()``, once, when the computation's host finishes."""
    global _init_close
    close, _init_close = _init_close, None
    if callable(close):
        try:
            close()
        except Exception as exc:
            logger.warning("close() of the node's --init file raised %s: %s", type(exc).__name__, exc)


def load_callable(blob: bytes, serializer: Any, ns: dict[str, Any]) -> Any:
    return rebind(serializer.loads(blob), ns)


def call_with_setup_args(fn: Any, comp: Computation, serializer: Any) -> Any:
    args = serializer.loads(comp.setup_args) if comp.setup_args else ()
    if not isinstance(args, tuple | list):
        args = (args,)
    return fn(*args)


def snapshot(ns: dict[str, Any]) -> dict[str, Any]:
    """The globals before setup (a shallow copy), to find which ones setup created or replaced."""
    return dict(ns)


def _changed_keys(ns: dict[str, Any], before: dict[str, Any]) -> list[str]:
    missing = object()
    return [key for key, value in ns.items()
            if key not in _SKIP_GLOBALS and before.get(key, missing) is not value]


def changed_globals(ns: dict[str, Any], before: dict[str, Any], serializer: Any) -> dict[str, bytes]:
    """Setup's new or replaced globals, each serialized; unserializable ones are skipped with a log line.

    A global setup changes in place (``data.append(...)`` on a depends' list) is not seen as changed.
    """
    out: dict[str, bytes] = {}
    for key in _changed_keys(ns, before):
        value = ns[key]
        if isinstance(value, types.ModuleType):
            logger.info("setup global %r is a module; jobs must import it themselves", key)
            continue
        try:
            out[key] = serializer.dumps(value)
        except Exception as exc:
            logger.warning("setup global %r (%s) cannot be serialized for job processes, skipped: %s",
                           key, type(value).__name__, exc)
    return out


def take_globals(ns: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Remove setup's new or replaced globals from ``ns`` (restoring what they replaced); returned so
    that :func:`put_back_globals` can give them to ``cleanup``."""
    held = {key: ns[key] for key in _changed_keys(ns, before)}
    for key in held:
        if key in before:
            ns[key] = before[key]
        else:
            del ns[key]
    return held


def put_back_globals(ns: dict[str, Any], held: dict[str, Any]) -> None:
    ns.update(held)


def install_setup_globals(blob: bytes, serializer: Any, ns: dict[str, Any]) -> None:
    """In a spawned job: load setup's globals (each on its own, so one bad value spoils nothing else)."""
    if not blob:
        return
    for key, data in serializer.loads(blob).items():
        try:
            value = serializer.loads(data)
        except Exception as exc:
            logger.warning("setup global %r cannot be loaded in the job process, skipped: %s", key, exc)
            continue
        ns[key] = rebind(value, ns)
