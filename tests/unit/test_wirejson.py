"""The frame headers' JSON: the same text as ``json.dumps`` compact, and ``json.loads``'s verdicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core import wirejson

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
documents = st.dictionaries(st.text(), st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                                                    | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20))


@given(documents)
def test_dumps_is_compact_ascii_json(doc: dict) -> None:
    text = wirejson.dumps(doc)
    assert text == json.dumps(doc, separators=(",", ":"))
    assert text.isascii()


@given(documents)
def test_loads_reads_back_what_dumps_wrote(doc: dict) -> None:
    text = wirejson.dumps(doc)
    assert json.dumps(wirejson.loads(text)) == json.dumps(json.loads(text))


@given(st.text(max_size=40))
def test_loads_accepts_and_refuses_what_json_does(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            wirejson.loads(text)
    else:
        assert json.dumps(wirejson.loads(text)) == json.dumps(expected)


def test_whitespace_around_and_trailing_data() -> None:
    assert wirejson.loads(' {"a": 1} \n') == {"a": 1}
    with pytest.raises(ValueError):
        wirejson.loads('{"a":1}{"b":2}')


def test_what_json_cannot_carry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes"):
        wirejson.dumps({"blob": b"x"})


def test_a_cycle_or_a_too_deep_value_is_a_value_error() -> None:
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for value in ({"a": cyclic}, {"a": deep}):
        with pytest.raises(ValueError, match="nested too deeply"):
            wirejson.dumps(value)
