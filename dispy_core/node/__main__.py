"""``python -m dispy_core.node``: ``dispynode``, for when the installed command is not on PATH
(a venv not activated)."""

from __future__ import annotations

import sys

from dispy_core.node.cli import main

if __name__ == "__main__":
    sys.exit(main())
