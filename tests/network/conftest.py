"""Multi-host tests of discovery and networks: hosts in Linux network namespaces (``dispy_core.testing.netns``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispy_core.testing.netns import Lab, netns_unusable_reason, reap_stale_labs


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab per test; everything in it is killed and its namespaces deleted, pass or fail."""
    reason = netns_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    reap_stale_labs()
    with Lab() as made:
        yield made
