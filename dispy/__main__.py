"""``python -m dispy``: the ``dispy`` command (``python -m dispy demo``), for when the
installed commands are not on PATH (a venv not activated).
"""

from __future__ import annotations

import sys

from dispy_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
