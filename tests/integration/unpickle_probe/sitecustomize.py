"""Records every unpickling in the processes started with this directory on PYTHONPATH.

Used by ``tests/integration/test_fuzz_node.py`` to prove that a node unpickles nothing a peer sent before
authentication: counting at the bottom (pickle itself) catches every way to get there, the serializer plugin,
dill, or a path nobody thought of. With ``DISPY_UNPICKLE_LOG`` set, ``pickle.loads``, ``pickle.load`` and
``pickle.Unpickler.load`` append "pid what" to that file before they unpickle. dill's Unpickler derives
from whichever ``pickle.Unpickler`` is current when dill is imported, so dill is counted too.

With ``DISPY_UNPICKLE_SELFTEST`` set, this module unpickles once at start-up, through the wrapper, recorded as
"pid selftest": the proof that the wrapper is live in that very process, so a test that expects no other
record can fail.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

_LOG = os.environ.get("DISPY_UNPICKLE_LOG", "")
_selftest = False


def _record(what: str) -> None:
    line = f"{os.getpid()} {'selftest' if _selftest else what}\n".encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one short write with O_APPEND: lines of several processes do not mix
    finally:
        os.close(fd)


def _install() -> None:
    real_loads, real_load, stock = pickle.loads, pickle.load, pickle.Unpickler

    def loads(*args: Any, **kwargs: Any) -> Any:
        _record("pickle.loads")
        return real_loads(*args, **kwargs)

    def load(*args: Any, **kwargs: Any) -> Any:
        _record("pickle.load")
        return real_load(*args, **kwargs)

    class Unpickler(stock):  # type: ignore[misc, valid-type]
        def load(self) -> Any:
            _record("Unpickler.load")
            return super().load()

    pickle.loads, pickle.load = loads, load
    pickle.Unpickler = Unpickler  # type: ignore[misc]


if _LOG:
    _install()
    if os.environ.get("DISPY_UNPICKLE_SELFTEST"):
        _selftest = True
        pickle.loads(pickle.dumps("selftest"))
        _selftest = False
