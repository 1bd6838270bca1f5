"""The computation record: every field travels on the wire and to host processes, with no hand copying."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_protocol_codec import SETTINGS, _field_strategy

from dispy_core import computation
from dispy_core.client.computation import package
from dispy_core.computation import Computation
from dispy_core.interfaces import ComputationSpec
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import decode_body, encode_body
from dispy_plugins.executor_host.namespace import CompInfo
from dispy_plugins.serializer_pickle.serializer import PickleSerializer

WIRE_ONLY = {"req_id", "cleanup_files", "cpus", "dest_path", "setup_timeout"}
"""ComputationOpen's fields that are not the computation's: the request, and what the node handles itself."""


def test_every_record_field_is_a_computation_open_field_of_the_same_type_and_default() -> None:
    wire = dict(m.field_kinds(m.ComputationOpen))
    for name, kind in computation.field_types().items():
        assert wire.get(name) == kind, f"Computation.{name}: {kind!r}, but ComputationOpen.{name}: {wire.get(name)!r}"
    assert set(wire) - set(computation.NAMES) == WIRE_ONLY
    defaults = {f.name: f for f in dataclasses.fields(m.ComputationOpen)}
    for f in dataclasses.fields(Computation):
        assert f.default == defaults[f.name].default
        assert (f.default_factory is dataclasses.MISSING) == (defaults[f.name].default_factory is dataclasses.MISSING)


def test_blob_fields_are_the_bytes_fields_in_declaration_order() -> None:
    types = computation.field_types()
    assert computation.BLOB_FIELDS == tuple(n for n in computation.NAMES if types[n] is bytes)
    assert set(computation.JSON_FIELDS) | set(computation.BLOB_FIELDS) == set(computation.NAMES)
    assert not set(computation.JSON_FIELDS) & set(computation.BLOB_FIELDS)


records = st.builds(Computation, **{name: _field_strategy(kind) for name, kind in computation.field_types().items()})


@SETTINGS
@given(records, st.integers(0, 2**32), st.integers(0, 64))
def test_a_record_round_trips_through_computation_open(record: Computation, req_id: int, cpus: int) -> None:
    msg = m.ComputationOpen(req_id=req_id, **record.fields(), cpus=cpus)
    back = decode_body(m.ComputationOpen.CODE, encode_body(msg))
    assert isinstance(back, m.ComputationOpen)
    assert Computation.of(back) == record
    assert (back.req_id, back.cpus) == (req_id, cpus)


@SETTINGS
@given(records, st.binary(max_size=20), st.lists(st.binary(max_size=20), max_size=2))
def test_comp_info_round_trips_through_its_init_frame(record: Computation, ser_blob: bytes, more: list[bytes]) -> None:
    spec = ComputationSpec(record, Path("/tmp/w"), "pickle", node_name="n", node_ip_addr="10.0.0.1",
                           extra={"jobs_per_process": 3})
    info = CompInfo.of(spec, max_frame=1000, serializer_blob=ser_blob)
    header, blobs = info.to_frame()
    assert len(blobs) == CompInfo.BLOBS
    assert not any(isinstance(v, bytes) for v in header["computation"].values()), "a blob went into JSON"
    back = CompInfo.from_frame(header, [*blobs, *more])  # a spawned job's frame has setup's globals after them
    assert back == info
    assert back.computation is not record and back.computation == record


def test_from_parts_refuses_a_wrong_number_of_blobs() -> None:
    header, blobs = Computation("c", "n", "function").to_parts()
    with pytest.raises(ValueError, match="blobs"):
        Computation.from_parts(header, blobs[:-1])


def double(x: Any) -> Any:
    return 2 * x


def test_packaging_a_function_makes_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "areamod.py").write_text("import math\n\n\ndef area(r):\n    return math.pi * r * r\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    area = importlib.import_module("areamod").area
    pkg = package(area, [], None, None, PickleSerializer())
    comp = pkg.computation
    assert (comp.kind, comp.name, comp.code_name, comp.comp_id) == ("function", "area", "area", "")
    assert comp.code and "def area" in comp.source
    assert comp.py_version == list(sys.version_info[:2])
    assert comp.options == {"source_complete": True, "source_modules": {"math": "math"},
                            "source_file": str(tmp_path / "areamod.py"), "source_line": 4}
    assert pkg.source_complete and pkg.source_modules == {"math": "math"}
    assert (pkg.kind, pkg.name, pkg.files) == ("function", "area", [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        comp.name = "other"  # type: ignore[misc]


def test_packaging_an_annotated_function_sends_its_code_first() -> None:
    pkg = package(double, [], None, None, PickleSerializer())
    assert pkg.computation.code and "def double" in pkg.computation.source
    assert pkg.computation.options == {"source_file": __file__, "source_line": double.__code__.co_firstlineno}
    assert not pkg.source_complete


def test_packaging_a_program_makes_its_record(tmp_path: Path) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text("print(1)\n")
    pkg = package(str(prog), [], None, None, PickleSerializer())
    assert (pkg.kind, pkg.name, pkg.computation.program, pkg.computation.code) == ("program", "prog.py", "prog.py", b"")
    assert [f.relpath for f in pkg.files] == ["prog.py"]
    assert not pkg.source_complete
    with pytest.raises(ValueError, match="only possible with a Python function"):
        package(str(prog), [], double, None, PickleSerializer())
