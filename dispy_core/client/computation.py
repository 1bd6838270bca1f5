"""Packaging a computation for nodes: code by value plus source, dependencies split into files and code."""

from __future__ import annotations

import ast
import inspect
import os
import reprlib
import sys
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any

from dispy_core import jobargs
from dispy_core.computation import Computation
from dispy_core.errors import SerializationError
from dispy_core.interfaces import Serializer


@dataclass
class FileDepend:
    """A file to send: local path and the path relative to the computation's directory on the node."""

    path: str
    relpath: str
    size: int
    mode: int


@dataclass
class Package:
    """A packaged computation: its record (``comp_id`` and ``setup_args`` are filled in when it is opened
    on a node) and the files to send with it."""

    computation: Computation
    files: list[FileDepend] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.computation.kind

    @property
    def name(self) -> str:
        return self.computation.name

    @property
    def source_complete(self) -> bool:
        """The source alone rebuilds the function, given :attr:`source_modules`: nodes then need not load
        dill-pickled code (cheaper forks)."""
        return bool(self.computation.options.get("source_complete"))

    @property
    def source_modules(self) -> dict[str, str]:
        """The modules the source needs: name in the function's globals -> module name."""
        return dict(self.computation.options.get("source_modules", {}))

    def pack_job(self, args: tuple[Any, ...], kwargs: dict[str, Any], depends: Any,
                 serializer: Serializer) -> tuple[bytes, list[str]]:
        """A job of this computation: its argument bytes and the paths of its own files (see :func:`pack_job`)."""
        return pack_job(self.kind, args, kwargs, depends, serializer)


def file_depend(path: str) -> FileDepend:
    if not os.path.isfile(path):
        raise ValueError(f"dependency {path!r} is not a readable file")
    stat = os.stat(path)
    return FileDepend(os.path.abspath(path), os.path.basename(path), stat.st_size, stat.st_mode & 0o777)


def function_source(fn: Any) -> str:
    """The function's source, dedented, or '' when there is none (lambdas in expressions, REPL code)."""
    return function_source_at(fn)[0]


def function_source_at(fn: Any) -> tuple[str, str, int]:
    """``(source, file, first line)`` of the function: its source dedented, the absolute path of the file
    it is in (for a function of ``__main__``, the program's script) and the line its source starts at
    (its first decorator's). Nodes compile the source under that name and line and show it in
    tracebacks, so a failing job's frames point into the program's own file. ``("", "", 0)`` when
    there is no source (lambdas in expressions, REPL code)."""
    if getattr(fn, "__name__", "") == "<lambda>":
        return "", "", 0
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return "", "", 0
    filename = fn.__code__.co_filename
    if not (filename.startswith("<") and filename.endswith(">")):
        filename = os.path.abspath(filename)
    return textwrap.dedent("".join(lines)), filename, max(first, 1)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def portable_source(fn: Any, source: str) -> dict[str, str] | None:
    """The modules (global name -> module name) the function's source needs, or None when the source
    alone cannot rebuild it: closures, decorators, defaults or annotations that are not literals, or
    globals other than modules (those travel only by value)."""
    if not source or fn.__code__.co_freevars or fn.__name__ == "<lambda>":
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    node = tree.body[0]
    if node.name != fn.__name__ or node.decorator_list:
        return None
    args = node.args
    for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
        if not isinstance(default, ast.Constant):
            return None
    annotated = [a for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
                 if a is not None and a.annotation is not None]
    if annotated or node.returns is not None:
        return None
    modules: dict[str, str] = {}
    for name in _code_names(fn.__code__):
        if name not in fn.__globals__:
            continue  # a builtin, an attribute name, or a name the node injects
        value = fn.__globals__[name]
        if not isinstance(value, types.ModuleType):
            return None
        modules[name] = value.__name__
    return modules


def describe(obj: Any) -> str:
    """How an error names a dependency: its kind and name, rather than a repr cut off in the middle."""
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if inspect.isclass(obj):
        return f"class {obj.__qualname__}"
    if callable(obj) and isinstance(getattr(obj, "__qualname__", None), str):
        return f"function {obj.__qualname__}"
    if type(obj).__repr__ is object.__repr__:  # an address tells the reader nothing
        return f"an instance of {type(obj).__qualname__}"
    return reprlib.repr(obj)


def sort_depends(depends: list[Any]) -> tuple[list[Any], list[str]]:
    """``(code objects, file paths)``: paths stay paths, modules become their source files (built-in ones
    need nothing), functions, classes and instances travel by value as code."""
    code_objects: list[Any] = []
    paths: list[str] = []
    for dep in depends or []:
        if isinstance(dep, str | os.PathLike):
            paths.append(os.fspath(dep))
        elif isinstance(dep, types.ModuleType):
            module_file = getattr(dep, "__file__", None)
            if not module_file or not module_file.endswith(".py"):
                if dep.__name__ in sys.builtin_module_names or module_file is None:
                    continue  # built in: present on every node
                raise ValueError(f"module {dep.__name__} has no Python source to send ({module_file})")
            paths.append(module_file)
        elif callable(dep) or inspect.isclass(dep) or hasattr(dep, "__dict__"):
            code_objects.append(dep)
        else:
            raise ValueError(f"cannot send dependency {describe(dep)}: give a file path, module, function, "
                             f"class or instance")
    return code_objects, paths


def split_depends(depends: list[Any], serializer: Serializer) -> tuple[bytes, list[FileDepend]]:
    """Files and modules become files; functions, classes and instances travel by value as code."""
    code_objects, paths = sort_depends(depends)
    files = [file_depend(path) for path in paths]
    depends_code = serializer.dumps_code(code_objects) if code_objects else b""
    return depends_code, files


def pack_job(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], depends: Any,
             serializer: Serializer) -> tuple[bytes, list[str]]:
    """A job's argument bytes (:mod:`dispy_core.jobargs`) and the paths of the files it sends first.

    ``depends`` are its ``dispy_job_depends``, in the format of a computation's ``depends``. Its code
    rides in the argument bytes; its Python files are also named there (as modules), so that a job
    process that runs further jobs forgets them after this one. Raises ValueError or SerializationError
    naming the element at fault.
    """
    if not isinstance(depends, list | tuple):
        raise ValueError(f"dispy_job_depends must be a list (of file paths, modules, functions, classes or "
                         f"instances), not {type(depends).__name__}")
    try:
        code_objects, paths = sort_depends(list(depends))
    except ValueError as exc:
        raise ValueError(f"dispy_job_depends: {exc}") from None
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"dispy_job_depends: {path!r} is not a readable file")
    if code_objects and kind == "program":
        raise ValueError(f"dispy_job_depends of a program computation may hold only files and modules, not "
                         f"{describe(code_objects[0])}")
    if kind == "program":
        return jobargs.pack(serializer, args, kwargs), paths
    modules = [os.path.basename(path)[:-3] for path in paths if path.endswith(".py")]
    return jobargs.pack(serializer, args, kwargs, dumps_job_code(code_objects, serializer), modules), paths


def dumps_job_code(code_objects: list[Any], serializer: Serializer) -> bytes:
    """The objects as one ``dumps_code`` (shared references stay shared); on failure, the error names the
    first object that cannot be sent, not the whole list."""
    if not code_objects:
        return b""
    try:
        return serializer.dumps_code(code_objects)
    except SerializationError as exc:
        for obj in code_objects:
            try:
                serializer.dumps_code([obj])
            except SerializationError as one:
                reason = one.__cause__ or one
                raise SerializationError(f"dispy_job_depends element {describe(obj)} cannot be sent: "
                                         f"{type(reason).__name__}: {reason}") from one
        raise SerializationError(f"dispy_job_depends cannot be sent: {exc}") from exc


def package(computation: Any, depends: list[Any], setup: Any, cleanup: Any, serializer: Serializer) -> Package:
    files: list[FileDepend] = []
    fields: dict[str, Any]
    if isinstance(computation, str):
        fields = {"kind": "program", "name": os.path.basename(computation), "program": computation}
        if os.path.isfile(computation):
            dep = file_depend(computation)
            fields["program"] = dep.relpath
            files.append(dep)
    elif callable(computation) and inspect.isfunction(computation):
        source, source_file, source_line = function_source_at(computation)
        fields = {"kind": "function", "name": computation.__name__, "code": serializer.dumps_code(computation),
                  "source": source, "code_name": computation.__name__}
        options: dict[str, Any] = {"source_file": source_file, "source_line": source_line} if source else {}
        modules = portable_source(computation, source)
        if modules is not None:
            options.update({"source_complete": True, **({"source_modules": modules} if modules else {})})
        if options:
            fields["options"] = options
    elif callable(computation):
        fields = {"kind": "function", "name": getattr(computation, "__name__", type(computation).__name__),
                  "code": serializer.dumps_code(computation)}
    else:
        raise ValueError(f"computation must be a Python function or the path of a program, not {computation!r}")
    fields["depends_code"], depend_files = split_depends(depends, serializer)
    files.extend(depend_files)
    for what, fn in (("setup", setup), ("cleanup", cleanup)):
        if fn is None or isinstance(fn, bool):
            continue
        if not callable(fn):
            raise ValueError(f"{what} must be a function, not {fn!r}")
        if fields["kind"] == "program":
            raise ValueError(f"{what} is only possible with a Python function computation")
        fields[what] = serializer.dumps_code(fn)
    return Package(Computation(comp_id="", py_version=list(sys.version_info[:2]), **fields), files)
