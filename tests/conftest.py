from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from dispy_core.testing.nodes import NodeProcess, start_node

# The unit tests also run on the other Pythons (run_tests.sh) to catch what a new Python breaks, not to search
# as widely again: there they draw fewer examples (DISPY_HYPOTHESIS_PROFILE=other-python).
settings.register_profile("other-python", max_examples=20)
if os.environ.get("DISPY_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["DISPY_HYPOTHESIS_PROFILE"])

# Discovery in this process and its children stays on loopback unless a test says otherwise: nothing a
# test does may broadcast or multicast on a real interface (tests of discovery run in network namespaces
# and set DISPY_HOST there).
os.environ.setdefault("DISPY_HOST", "127.0.0.1")


@pytest.fixture
def node_factory(tmp_path: Any) -> Iterator[Callable[..., NodeProcess]]:
    """Start real dispynode processes on loopback; all are stopped (by PID) after the test."""
    started: list[NodeProcess] = []

    def factory(*args: str, **kwargs: Any) -> NodeProcess:
        kwargs.setdefault("prefix", tmp_path / f"node{len(started)}")
        kwargs["prefix"].mkdir(parents=True, exist_ok=True)
        node = start_node(args, **kwargs)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    return node_factory()


@pytest.fixture(autouse=True, scope="session")
def no_recover_files_left() -> Iterator[None]:
    """Clusters write ``_dispy_*`` recover files in the current directory and remove them when closed; those of
    clusters a test left unclosed (on purpose: a crash) are removed at the end, not left in the checkout."""
    before = set(glob.glob("_dispy_*"))
    yield
    for path in set(glob.glob("_dispy_*")) - before:
        try:
            os.unlink(path)
        except OSError:
            pass
