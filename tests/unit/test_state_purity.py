"""``dispy_core.state`` is pure: importing it brings in nothing that does I/O, keeps time or runs threads.

Checked in a fresh interpreter, so what other tests imported cannot hide a dependency.
"""

from __future__ import annotations

import subprocess
import sys

IMPURE = ("asyncio", "socket", "ssl", "selectors", "threading", "subprocess", "multiprocessing", "time",
          "dispy_core.channel", "dispy_core.client", "dispy_core.node", "dispy_core.pluginmanager")

PROBE = """
import sys
before = set(sys.modules)
import dispy_core.state.cluster, dispy_core.state.node, dispy_core.state.job, dispy_core.state.events
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def test_state_imports_nothing_that_does_io() -> None:
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert "dispy_core.state.cluster" in loaded  # the probe saw the imports it made
    impure = [name for name in loaded if name.split(".")[0] in IMPURE or name.startswith(IMPURE)]
    assert impure == [], f"dispy_core.state imports {impure}"
