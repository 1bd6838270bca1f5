"""A logger for host and job processes that imports :mod:`logging` only when something is logged.

``logging`` imports ``threading``, whose at-fork handlers make every fork of the host touch (and so
copy) many more pages: on a slow VM that doubled the CPU cost of each job. Hosts that log nothing
never pay for it.
"""

from __future__ import annotations

import sys
from typing import Any

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class LazyLogger:
    """Stands in for ``logging.getLogger(name)``; the first attribute access creates the real one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import logging

            root = logging.getLogger()
            if not root.handlers:
                logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=_format())
            self._logger = logging.getLogger(self._name)
        return getattr(self._logger, attr)


def _format() -> str:
    return LOG_FORMAT
