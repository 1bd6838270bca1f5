"""The recover file (client) and the kept results (node): what each writes is what the other reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dispy_core.client.recovery import RecoverLog, latest_recover_file, read_recover_file
from dispy_core.errors import DispyError
from dispy_core.node.kept import DiskBudget, KeptResults
from dispy_core.protocol import messages as m


def result(uid: int, size: int = 10) -> m.JobResult:
    return m.JobResult("c1", uid, 11, b"r" * size, b"out", b"", "", 1.0, 2.0)


def test_pending_jobs_are_those_sent_and_not_done_the_last_node_wins(tmp_path: Path) -> None:
    log = RecoverLog(str(tmp_path / "_dispy_1"), {"comp_id": "c1", "key": "00"})
    log.sent("10.0.0.1:9701", [1, 2, 3])
    log.done(2)
    log.sent("10.0.0.2:9701", [3, 4])  # 3 resubmitted elsewhere
    log.close(remove=False)
    record = read_recover_file(log.path)
    assert record.comp_id == "c1"
    assert record.pending == {"10.0.0.1:9701": {1}, "10.0.0.2:9701": {3, 4}}
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


def test_a_last_line_cut_by_the_crash_is_ignored_a_bad_line_elsewhere_is_named(tmp_path: Path) -> None:
    log = RecoverLog(str(tmp_path / "_dispy_1"), {"comp_id": "c1"})
    log.sent("h:1", [1, 2])
    log.close(remove=False)
    with open(log.path, "a") as handle:
        handle.write("D 1")  # no newline, and then the process died: still a whole record here
    assert read_recover_file(log.path).pending == {"h:1": {2}}
    with open(log.path, "a") as handle:
        handle.write("\nS h:1 x")
    assert read_recover_file(log.path).pending == {"h:1": {2}}  # the torn last line
    with open(log.path, "a") as handle:
        handle.write("\nD 2\n")
    with pytest.raises(DispyError, match=r"line 4: not a recover record"):
        read_recover_file(log.path)


def test_two_clusters_in_the_same_second_get_two_files(tmp_path: Path) -> None:
    first = RecoverLog(str(tmp_path / "_dispy_x"), {"comp_id": "a"})
    second = RecoverLog(str(tmp_path / "_dispy_x"), {"comp_id": "b"})
    assert first.path != second.path
    os.utime(first.path, (1, 1))
    assert latest_recover_file(str(tmp_path)) == second.path
    second.close(remove=True)
    assert not os.path.exists(second.path)


def test_rewrite_keeps_only_what_is_pending_and_removes_an_empty_file(tmp_path: Path) -> None:
    log = RecoverLog(str(tmp_path / "_dispy_1"), {"comp_id": "c1"})
    log.sent("h:1", [1, 2, 3])
    log.close(remove=False)
    record = read_recover_file(log.path)
    record.pending["h:1"] = {3}
    record.rewrite()
    assert read_recover_file(log.path).pending == {"h:1": {3}}
    record.pending["h:1"] = set()
    record.rewrite()
    assert not os.path.exists(log.path)


def test_kept_results_survive_a_spill_and_read_back_as_sent(tmp_path: Path) -> None:
    budget = DiskBudget(1 << 20)
    kept = KeptResults(tmp_path / "c1", budget)
    kept.keep_sent(result(1))
    kept.keep_sent(result(2))
    kept.acknowledged([1])
    kept.spill()
    assert kept.uids() == {2} and not kept.sent
    assert kept.load(2) == result(2)
    kept.store(result(3))
    assert budget.used > 0
    kept.forget_except({3})
    assert kept.uids() == {3}
    kept.clear()
    assert budget.used == 0 and not (tmp_path / "c1").exists()


def test_the_disk_budget_drops_results_with_a_reason_it_can_tell(tmp_path: Path) -> None:
    budget = DiskBudget(300)
    kept = KeptResults(tmp_path / "c1", budget)
    kept.store(result(1, 100))
    kept.store(result(2, 500))
    assert kept.uids() == {1}
    assert "kept_results_limit" in kept.dropped[2]
    kept.acknowledged([1])
    assert budget.used == 0


def test_an_unreadable_kept_result_is_dropped_not_loaded(tmp_path: Path) -> None:
    kept = KeptResults(tmp_path / "c1", DiskBudget(1 << 20))
    kept.store(result(1))
    (tmp_path / "c1" / "1.result").write_bytes(b"\xff" * 20)
    assert kept.load(1) is None
    assert 1 in kept.dropped and kept.uids() == set()


def test_jobs_submitted_and_never_sent_come_back_with_the_programs_ids(tmp_path: Path) -> None:
    log = RecoverLog(str(tmp_path / "_dispy_1"), {"comp_id": "c1"})
    log.submitted(3, [(1, "first"), (3, 30), (2, object())])  # an id that is not a plain value is not kept
    log.sent("h:1", [1])
    log.submitted(5, [])
    log.done(4)
    log.close(remove=False)
    record = read_recover_file(log.path)
    assert record.pending == {"h:1": {1}}
    assert record.unsent == {2, 3, 5}
    assert record.ids == {1: "first", 3: 30}


def test_a_recovered_failed_job_future_raises_the_original_exception() -> None:
    import base64
    import pickle
    from types import SimpleNamespace

    import pytest

    from dispy_core.client.job import DispyJob
    from dispy_core.client.recover_jobs import _NodeRecovery
    from dispy_core.protocol import messages as m
    from dispy_core.status import JobStatus

    recovery = _NodeRecovery.__new__(_NodeRecovery)
    recovery.program = False
    channel: object = SimpleNamespace(session=SimpleNamespace(loads=pickle.loads))
    job = DispyJob(7, (), {})
    original = ValueError("bad value 7")
    msg = m.JobResult("comp", 7, int(JobStatus.Terminated), pickle.dumps(None), b"", b"",
                      "Traceback ...\nValueError: bad value 7\n", 1.0, 2.0,
                      exception_object=base64.b64encode(pickle.dumps(original)).decode("ascii"))
    recovery._fill(job, channel, msg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad value 7"):
        job.future.result(timeout=1)
