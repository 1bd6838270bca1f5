"""The record of what a computation is: one frozen dataclass from the client's packaging to the job process.

The client's packaging makes it (``client/computation.py``), ``ComputationOpen`` carries its fields flat
on the wire (field for field, same names and types: :meth:`Computation.fields` builds the message's
keyword arguments, :meth:`Computation.of` reads them back), the node hands it to its executor inside
``ComputationSpec``, and the executor host sends it to host and job processes as a JSON header plus
blobs (:meth:`Computation.to_parts` / :meth:`Computation.from_parts`). Every copy is driven by
``dataclasses.fields(Computation)``: a new field needs no hand copying anywhere (on the wire it needs
the same field in ``ComputationOpen``, which a unit test checks).

Fields are of the wire's safe types only (``str``, ``int``, ``float``, ``bool``, ``bytes``,
``list[int]``, ``list[str]``, ``dict[str, Any]`` of JSON values). ``bytes`` fields are serialized user
objects, loaded only in host and job processes, never here. Pure: no I/O, no imports beyond the
standard library (host and job processes import it, and must stay cheap to start).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Computation:
    """One computation, as its client described it.

    ``kind`` is ``"function"`` or ``"program"`` (then ``program`` is the program's path relative to the
    computation's directory, or a command). ``code`` is the function serialized by value by the
    client's serializer; ``source``/``code_name`` its source and name, the fallback when the node's
    Python is not ``py_version`` (the client's major, minor). ``depends_code`` is a serialized list of
    functions/classes/instances jobs see as globals; ``setup``/``cleanup`` serialized callables (or
    empty); ``setup_args`` setup's serialized arguments (they may differ per node). ``options`` are the
    client's requests, unchecked: ``source_complete`` (the source alone rebuilds the function, given
    ``source_modules``: alias -> module name), ``source_file``/``source_line`` (where the source is in
    the client's files: nodes compile it under that name and line, for tracebacks), ``jobs_per_process``,
    ``pulse_interval``.
    """

    comp_id: str
    name: str
    kind: str
    code: bytes = b""
    source: str = ""
    code_name: str = ""
    program: str = ""
    py_version: list[int] = field(default_factory=list)
    depends_code: bytes = b""
    setup: bytes = b""
    cleanup: bytes = b""
    setup_args: bytes = b""
    options: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Every field by name (shallow: the message or frame built from it shares the values)."""
        return {name: getattr(self, name) for name in NAMES}

    @classmethod
    def of(cls, source: Any) -> Computation:
        """The record from any object with an attribute per field (``ComputationOpen`` on the node)."""
        return cls(**{name: getattr(source, name) for name in NAMES})

    def to_parts(self) -> tuple[dict[str, Any], list[bytes]]:
        """The JSON-able fields, and the ``bytes`` fields in declaration order (blobs never go in JSON)."""
        return {name: getattr(self, name) for name in JSON_FIELDS}, [getattr(self, name) for name in BLOB_FIELDS]

    @classmethod
    def from_parts(cls, header: dict[str, Any], blobs: list[Any]) -> Computation:
        """Inverse of :meth:`to_parts`; ``blobs`` may be views (job arguments pass through as such)."""
        if len(blobs) != len(BLOB_FIELDS):
            raise ValueError(f"a computation has {len(BLOB_FIELDS)} blobs, not {len(blobs)}")
        kwargs = {name: header[name] for name in JSON_FIELDS if name in header}
        kwargs.update(zip(BLOB_FIELDS, blobs, strict=True))
        return cls(**kwargs)


def field_types() -> dict[str, Any]:
    """Each field's type, annotations resolved."""
    hints = typing.get_type_hints(Computation)
    return {f.name: hints[f.name] for f in dataclasses.fields(Computation)}


NAMES: tuple[str, ...] = tuple(field_types())
BLOB_FIELDS: tuple[str, ...] = tuple(name for name, kind in field_types().items() if kind is bytes)
JSON_FIELDS: tuple[str, ...] = tuple(name for name in NAMES if name not in BLOB_FIELDS)
