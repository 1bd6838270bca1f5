"""How far a cluster's jobs are: running totals, the live bar of ``cluster.wait(progress=True)``, and the
table ``print_status`` prints.

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


def status_table(records: list[Any], start_time: float, rate: float) -> str:
    """The table ``print_status`` prints: per node CPUs, jobs, times and bytes sent / received."""
    lines = ["", f"{'Node':>24} | {'CPUs':>4} | {'Jobs':>5} | {'Sec/Job':>8} | {'Node Time Sec':>13} | "
             f"{'Sent':>9} | {'Rcvd':>9}", "-" * 90]
    total_time = 0.0
    total_jobs = 0
    for node in records:
        per_job = node.cpu_time / node.jobs_done if node.jobs_done else 0.0
        label = f"{node.ip_addr}" + (f" ({node.name})" if node.name else "")
        lines.append(f"{label[:24]:>24} | {node.cpus:>4} | {node.jobs_done:>5} | {format_seconds(per_job, 8)} | "
                     f"{format_seconds(node.cpu_time, 13)} | {_human(node.tx):>9} | {_human(node.rx):>9}")
        total_time += node.cpu_time
        total_jobs += node.jobs_done
    wall = time.time() - start_time
    speedup = total_time / wall if wall > 0 else 0.0
    lines.append("")
    job_time = format_seconds(total_time) + ("" if 0 < total_time < 1 else " sec")
    lines.append(f"Total job time: {job_time}, wall time: {wall:.3f} sec, "
                 f"speedup: {speedup:.3f}")
    per_job_total = format_seconds(total_time / total_jobs) if total_jobs else "-"
    lines.append(f"Jobs done: {total_jobs}, {per_job_total} per job on a node, {rate:.1f} jobs/s "
                 f"(from the first submit to the last job done)")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} T"
