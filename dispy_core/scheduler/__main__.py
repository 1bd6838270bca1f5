"""``python -m dispy_core.scheduler``: ``dispyscheduler``, for when the installed command is not on PATH
(a venv not activated)."""

from __future__ import annotations

import sys

from dispy_core.scheduler.cli import main

if __name__ == "__main__":
    sys.exit(main())
