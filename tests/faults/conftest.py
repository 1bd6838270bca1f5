"""Fixtures of the fault matrix, and the table it prints at the end of the session.

The table is printed by ``pytest_terminal_summary`` whenever a fault scenario ran (``python -m pytest
tests/faults -q`` prints it); with ``DISPY_FAULTS_TABLE=path`` it is also written to that file, for the
README. Rows are recorded before a test's assertions, so a failing scenario still shows its counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultlab import Outcome, format_table

from dispy_core.testing.netns import Lab, netns_unusable_reason, reap_stale_labs

OUTCOMES = pytest.StashKey[list[Outcome]]()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab per scenario; everything in it is killed and its namespaces deleted, pass or fail."""
    reason = netns_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    reap_stale_labs()  # left by a test run that was killed before its finalizers could run
    with Lab() as made:
        yield made


@pytest.fixture
def record_outcome(request: pytest.FixtureRequest) -> Callable[[Outcome], None]:
    outcomes = request.config.stash.setdefault(OUTCOMES, [])
    return outcomes.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    outcomes = config.stash.get(OUTCOMES, [])
    if not outcomes:
        return
    table = format_table(outcomes)
    terminalreporter.write_sep("=", "fault matrix")
    terminalreporter.write_line(table)
    target = os.environ.get("DISPY_FAULTS_TABLE")
    if target:
        Path(target).write_text(table + "\n")
