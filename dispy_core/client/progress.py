"""How far a cluster's jobs are: running totals, and the live bar of ``cluster.wait(progress=True)``.

Ten thousand tiny jobs take long enough to wonder whether anything happens, and short enough that
``Sec/Job 0.000`` says nothing: the totals here give the rate (jobs/s) and the bar shows it while
waiting. The bar is tqdm's, drawn on stderr and only when stderr is a terminal: a program whose output
goes to a file or a pipe gets no control characters in it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from dispy_core.status import JobStatus

if TYPE_CHECKING:
    from dispy_core.client.cluster import JobCluster

__all__ = ["REFRESH", "JobCounts", "format_seconds", "wait_with_progress"]

REFRESH = 0.2
"""Seconds between two updates of the bar."""


@dataclass
class JobCounts:
    """Running totals of a cluster's jobs; updated under the cluster's lock, read as a snapshot."""

    total: int = 0
    done: int = 0
    """Jobs that reached their final status, whatever it is."""
    failed: int = 0
    """Of those, the ones that did not finish with a result (raised, terminated, cancelled, abandoned)."""
    first_submit: float | None = None
    last_done: float | None = None

    def submitted(self, when: float) -> None:
        self.total += 1
        if self.first_submit is None:
            self.first_submit = when

    def finished(self, ok: bool, when: float | None) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        self.last_done = when or time.time()

    def rate(self) -> float:
        """Jobs done per second, from the first submission to the last job done (0 if none yet)."""
        if not self.done or self.first_submit is None or self.last_done is None:
            return 0.0
        span = self.last_done - self.first_submit
        return self.done / span if span > 0 else 0.0


def format_seconds(seconds: float, width: int = 0) -> str:
    """Seconds as the status table shows them: below one second in milliseconds (``0.412 ms``), so that
    tiny jobs do not all read ``0.000``."""
    if 0 < seconds < 1:
        text = f"{seconds * 1000:.3g} ms"
    else:
        text = f"{seconds:.3f}"
    return f"{text:>{width}}" if width else text


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _snapshot(cluster: JobCluster) -> tuple[int, int, int, int]:
    """(submitted, done, failed, running) of ``cluster`` now."""
    with cluster._lock:
        counts = cluster._counts
        running = sum(1 for job in cluster._jobs.values()
                      if job.status in (JobStatus.Running, JobStatus.ProvisionalResult))
        return counts.total, counts.done, counts.failed, running


def wait_with_progress(cluster: JobCluster, timeout: float | None, stream: TextIO | None = None) -> bool:
    """``cluster.wait(timeout)`` with a live bar on ``stream`` (stderr) if it is a terminal."""
    stream = stream if stream is not None else sys.stderr
    if not _is_terminal(stream):
        return cluster.wait(timeout)
    from tqdm import tqdm  # only programs that show a bar pay for the import

    deadline = None if timeout is None else time.monotonic() + timeout
    total, done, failed, running = _snapshot(cluster)
    bar = tqdm(total=total, initial=done, desc=cluster.name, unit="job", file=stream, dynamic_ncols=True,
               mininterval=REFRESH, smoothing=0.2, leave=True)
    try:
        while True:
            step = REFRESH if deadline is None else min(REFRESH, max(0.0, deadline - time.monotonic()))
            finished = cluster.wait(step)
            total, done, failed, running = _snapshot(cluster)
            bar.total = total
            bar.set_postfix_str(f"failed {failed}, running {running}", refresh=False)
            bar.update(done - bar.n)
            if finished or (deadline is not None and time.monotonic() >= deadline):
                bar.refresh()
                return finished
    finally:
        bar.close()
