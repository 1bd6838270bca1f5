"""Meta-tests: every hook is documented, and some test exercises it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from dispy_core import hookspecs

HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if name.startswith("dispy_") and inspect.isfunction(obj))
TESTS_DIR = Path(__file__).resolve().parents[1]


def test_the_seven_verbs_have_hooks() -> None:
    for hook in ("dispy_make_discovery", "dispy_allocate", "dispy_make_scheduler", "dispy_make_serializer",
                 "dispy_make_executor", "dispy_pulse", "dispy_recover", "dispy_make_transport"):
        assert hook in HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    assert doc, f"{name} has no docstring"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{name}: parameter {param} is not documented"
    assert re.search(r"^Runs on: (client|node|scheduler)", doc, re.M), f"{name}: no 'Runs on:' section"
    opts = getattr(fn, "dispy_spec", {})
    if opts.get("firstresult"):
        assert "first non-None" in doc, f"{name} is firstresult but does not say so"
    else:
        assert "first non-None" not in doc, f"{name} is not firstresult but says it is"
    if opts.get("historic"):
        assert "istoric" in doc, f"{name} is historic but does not say so"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name: str) -> None:
    """Some test other than this one names the hook (calls it, or implements it in a test plugin)."""
    for path in TESTS_DIR.rglob("test_*.py"):
        if path.name == Path(__file__).name:
            continue
        if re.search(rf"\b{name}\b", path.read_text(encoding="utf-8")):
            return
    pytest.fail(f"no test mentions hook {name}")
