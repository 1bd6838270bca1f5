"""dispy: run Python functions and programs on many machines.

``import dispy; cluster = dispy.JobCluster(compute, nodes=[...])``. This package only re-exports the
public API; the implementation lives in ``dispy_core`` and the plugins in ``dispy_plugins``.
"""

from __future__ import annotations

import logging as _logging

from dispy import config
from dispy_core import __version__
from dispy_core.client.cluster import JobCluster
from dispy_core.client.executor import DispyExecutor
from dispy_core.client.job import DispyJob
from dispy_core.client.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy_core.client.recover_jobs import recover_jobs
from dispy_core.client.shared import SharedJobCluster
from dispy_core.logsetup import quiet_library_logger

logger = quiet_library_logger()  # a NullHandler: the program decides where dispy's records go
# The original's ``dispy.logger`` carried the level constants (``loglevel=dispy.logger.DEBUG``).
for _level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    setattr(logger, _level, getattr(_logging, _level))

MsgTimeout = config.MsgTimeout

__all__ = ["JobCluster", "SharedJobCluster", "DispyJob", "DispyNode", "DispyNodeAvailInfo", "NodeAllocate", "config",
           "recover_jobs", "logger", "__version__", "MsgTimeout",
           "DispyExecutor"]
