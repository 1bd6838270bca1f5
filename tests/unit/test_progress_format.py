"""The figures print_status and the progress bar show for tiny jobs."""

from __future__ import annotations

import io

from dispy_core.client.progress import JobCounts, format_seconds, wait_with_progress


def test_format_seconds_uses_milliseconds_below_a_second() -> None:
    assert format_seconds(0.000412) == "0.412 ms"
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(0.5) == "500 ms"
    assert format_seconds(2.5) == "2.500"
    assert format_seconds(0.0) == "0.000"
    assert format_seconds(0.0123, 8) == " 12.3 ms"


def test_job_counts_rate() -> None:
    counts = JobCounts()
    assert counts.rate() == 0.0
    counts.submitted(100.0)
    counts.submitted(100.5)
    counts.finished(True, 101.0)
    counts.finished(False, 102.0)
    assert (counts.total, counts.done, counts.failed) == (2, 2, 1)
    assert counts.rate() == 1.0


class _Cluster:
    """What wait_with_progress uses of a cluster when there is no terminal: only wait()."""

    def __init__(self) -> None:
        self.waited: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout)
        return True


def test_no_bar_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    cluster = _Cluster()
    assert wait_with_progress(cluster, 5.0, stream) is True  # type: ignore[arg-type]
    assert cluster.waited == [5.0] and stream.getvalue() == ""
