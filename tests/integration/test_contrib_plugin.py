"""A plugin from another distribution (contrib/dispy-roundrobin) is found and selected by name."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispy_core.config import load_config
from dispy_core.errors import PluginNotFound
from dispy_core.interfaces import NodeLoad, Scheduler
from dispy_core.pluginmanager import DispyPluginManager

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "dispy-roundrobin"


def _roundrobin_installed() -> bool:
    eps = importlib.metadata.entry_points(group="dispy.scheduler")
    return importlib.util.find_spec("dispy_roundrobin") is not None and any(
        ep.name == "roundrobin" for ep in eps)


@pytest.fixture(scope="module")
def roundrobin_installed() -> Iterator[None]:
    added_path = False
    if not _roundrobin_installed():
        if importlib.util.find_spec("pip") is None:
            pytest.skip("pip is not available in this environment to install contrib/dispy-roundrobin")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "-q", "-e", str(CONTRIB)],
            capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
        importlib.invalidate_caches()
        if importlib.util.find_spec("dispy_roundrobin") is None:
            # The editable install's import hook is set up by a .pth file at interpreter start; this
            # process started before it existed, so do by hand what that hook does.
            sys.path.insert(0, str(CONTRIB))
            added_path = True
        assert _roundrobin_installed(), "dispy-roundrobin installed but its entry point is not visible"
    yield
    if added_path:
        sys.path.remove(str(CONTRIB))


def _nodes(*busy: int) -> list[NodeLoad]:
    return [NodeLoad(f"n{i}", 2, b) for i, b in enumerate(busy)]


def test_selected_by_name_and_cycles(roundrobin_installed: None) -> None:
    manager = DispyPluginManager(load_config("client", env={"DISPY_SCHEDULER": "roundrobin"}))
    assert manager.selected["scheduler"] == ["roundrobin"]
    scheduler = manager.make_scheduler()
    assert isinstance(scheduler, Scheduler)
    assert type(scheduler).__module__.startswith("dispy_roundrobin")
    nodes = _nodes(0, 0, 0)
    assert [scheduler.choose(nodes) for _ in range(6)] == ["n0", "n1", "n2", "n0", "n1", "n2"]
    # full nodes are skipped; the cycle resumes after the last chosen node
    assert [scheduler.choose(_nodes(0, 2, 1)) for _ in range(4)] == ["n0", "n2", "n0", "n2"]
    assert scheduler.choose(_nodes(2, 2)) is None


def test_unknown_scheduler_lists_installed(roundrobin_installed: None) -> None:
    with pytest.raises(PluginNotFound) as info:
        DispyPluginManager(load_config("client", env={"DISPY_SCHEDULER": "no-such-policy"}))
    message = str(info.value)
    assert "no-such-policy" in message
    assert "roundrobin" in message and "loadbalance" in message
    assert {"roundrobin", "loadbalance"} <= set(info.value.installed)
