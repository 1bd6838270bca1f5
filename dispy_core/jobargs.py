"""A job's argument bytes: packed by the client, passed through the node untouched, loaded by the job.

They are ``serializer.dumps`` of one of two tuples:

- ``(args, kwargs)``: a job with nothing of its own to install (the common case, and the only shape
  a job had before ``dispy_job_depends`` could hold code);
- ``(JOB_DEPENDS, depends_code, modules, inner)``: a job whose ``dispy_job_depends`` hold functions,
  classes, instances or modules. ``depends_code`` is the serializer's ``dumps_code`` of those objects
  (the format of a computation's ``depends_code``), ``modules`` the names the job's own module files
  are imported by, and ``inner`` the first shape's bytes.

The job's code rides with its arguments because only the job process needs it: the node never loads
either, and neither the protocol nor the executors change. The arguments stay nested as bytes so that
the job process installs the code first: they may be instances of the very classes it brings.
Jobs without code or modules of their own keep the first shape, byte for byte; a node of an earlier
version fails a job of the second shape (its arguments do not unpack) rather than running it without.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # job processes import this module: keep it light
    from dispy_core.interfaces import Serializer

__all__ = ["JOB_DEPENDS", "JobDepends", "job_depends", "pack"]

JOB_DEPENDS = "dispy.job_depends"
"""The first element of the second shape (a plain ``(args, kwargs)`` has two elements, never four)."""


@dataclass(frozen=True, slots=True)
class JobDepends:
    """What a job brings of its own, for the job process to install before its arguments are loaded."""

    code: bytes
    modules: tuple[str, ...]
    inner: bytes


def pack(serializer: Serializer, args: tuple[Any, ...], kwargs: dict[str, Any], depends_code: bytes = b"",
         modules: Sequence[str] = ()) -> bytes:
    """The job's argument bytes; the first shape unless it has code or modules of its own."""
    inner = serializer.dumps((args, kwargs))
    if not depends_code and not modules:
        return inner
    return serializer.dumps((JOB_DEPENDS, bytes(depends_code), list(modules), inner))


def job_depends(loaded: Any) -> JobDepends | None:
    """The job's own depends if ``loaded`` (the loaded argument bytes) is the second shape, else None."""
    if type(loaded) is not tuple or len(loaded) != 4 or loaded[0] != JOB_DEPENDS:
        return None
    _, code, modules, inner = loaded
    if not isinstance(code, bytes) or not isinstance(inner, bytes) or not isinstance(modules, list) \
            or not all(isinstance(name, str) for name in modules):
        raise ValueError("malformed job arguments: a dispy_job_depends record with fields of the wrong types")
    return JobDepends(code, tuple(modules), inner)
