"""Keep large buffers in the heap instead of fresh mmaps.

glibc serves allocations above its mmap threshold (128 KiB to start) with a new mapping, and gives it
back on free, so every 1 MB argument or result costs a page fault per 4 KiB page on each copy. On a VM
that made moving a 1 MB argument through client, node, host and job ten times slower. Raising the
thresholds lets freed buffers be reused. Set ``DISPY_MALLOC_TUNING=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 128 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(environ: dict[str, str] | None = None) -> bool:
    """Apply the thresholds to this process and, through ``environ``, to processes it starts."""
    global _done
    if os.environ.get("DISPY_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    env = os.environ if environ is None else environ
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = ok
    return ok
