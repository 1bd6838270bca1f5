"""The fault matrix's harness: real dispynode processes and a real client program, each in its own
namespace of a :class:`~dispy_core.testing.netns.Lab`, and the judge that counts lost and duplicated results.

The test process stays in the root namespace and only starts processes, injects faults and reads the
client program's JSON lines; it never opens a socket itself, so no packet leaves the lab.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dispy_core.status import JobStatus
from dispy_core.testing.netns import Host

BASE_PORT = 9700
"""Each node has its own namespace, so every node can use the default port (it listens on 9701)."""
SECRET = "fault-matrix"
CLIENT_PROGRAM = Path(__file__).with_name("client_program.py")


def expected_result(n: int) -> int:
    """What ``client_program.compute(n, ...)`` returns; a result that differs counts as lost."""
    return n * 7919 + 13


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class FaultNode:
    """A dispynode running in ``host``'s namespace, with one CPU (the machine has two)."""

    host: Host
    name: str
    prefix: Path
    log_path: Path
    proc: Any = None
    starts: int = 0
    _offset: int = 0

    @property
    def port(self) -> int:
        return BASE_PORT + 1

    @property
    def key(self) -> str:
        return f"{self.host.addr}:{self.port}"

    def spawn(self) -> FaultNode:
        """Start the process (again, on the same address and port, after a kill); see :meth:`wait_ready`."""
        self.prefix.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dispy_core.node.cli", "-i", self.host.addr, "-p", str(BASE_PORT),
                "--daemon", "--cpus", "1", "--name", self.name, "--dest_path_prefix", str(self.prefix),
                "-s", SECRET]
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts} at monotonic {time.monotonic():.3f}\n".encode())
            log.flush()
            self._offset = log.tell()
            self.proc = self.host.popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    def wait_ready(self, timeout: float = 30.0) -> FaultNode:
        """Return once the node says it listens (it prints that after binding)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"dispynode ready" in self.log_path.read_bytes()[self._offset:]:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"dispynode {self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            time.sleep(0.05)
        raise RuntimeError(f"dispynode {self.name} not ready within {timeout} s:\n{tail(self.log_path)}")

    def signal(self, signum: int) -> None:
        """Signal the dispynode process itself (``ip netns exec`` exec'd it: same pid)."""
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def executor_hosts(self) -> list[psutil.Process]:
        """The node's computation host processes: its children started as ``executor_host.host``."""
        return [child for child in psutil.Process(self.proc.pid).children()
                if any("dispy_plugins.executor_host.host" in part for part in child.cmdline())]


@dataclass
class ClientProgram:
    """``client_program.py`` in its own namespace, driven over JSON lines on its stdin and stdout."""

    host: Host
    log_path: Path
    config: dict[str, Any]
    proc: Any = None
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    done: int = 0
    noise: list[str] = field(default_factory=list)
    delivered: list[dict[str, Any]] = field(default_factory=list)
    """Every ``done`` event: the final results the program had."""

    def start(self) -> ClientProgram:
        argv = [sys.executable, "-u", str(CLIENT_PROGRAM), json.dumps(self.config)]
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                        text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.noise.append(line.rstrip())
        self.events.put({"event": "eof", "returncode": self.proc.poll()})

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def expect(self, name: str, timeout: float, done: int | None = None) -> dict[str, Any]:
        """The next ``name`` event (or, with ``done``, the moment that many results came in)."""
        deadline = time.monotonic() + timeout
        while True:
            if done is not None and self.done >= done:
                return {"event": "done", "count": self.done}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"client program: no {name!r} event within {timeout} s "
                                     f"({self.done} results so far)\n{tail(self.log_path)}")
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if event["event"] == "done":
                self.done += 1
                self.delivered.append(event)
                if done is not None:
                    continue
            if event["event"] == "eof" and name == "eof":
                return event
            if event["event"] == "eof":
                raise AssertionError(f"client program ended (exit {self.proc.wait(5)}) before {name!r}:\n"
                                     f"{tail(self.log_path)}\n{self.noise[-10:]}")
            if event["event"] == name:
                return event

    def fault(self, node: FaultNode, at: float, what: str) -> None:
        """Tell the program which node was hit and when (monotonic, the same clock in every namespace)."""
        self.send(cmd="fault", key=node.key, t=at, what=what)

    def finish(self, wait_timeout: float, grace: float = 1.5) -> dict[str, Any]:
        self.send(cmd="finish", timeout=wait_timeout, grace=grace)
        summary: dict[str, Any] = self.expect("summary", wait_timeout + grace + 20)["summary"]
        return summary


@dataclass
class Verdict:
    """The counts the matrix reports for one scenario, and what went wrong, job by job."""

    jobs: int
    lost: int = 0
    duplicated: int = 0
    abandoned_expected: int = 0
    problems: list[str] = field(default_factory=list)


def judge(summary: dict[str, Any], asked: int, abandon_ok_on: str | None = None) -> Verdict:
    """Count LOST (no Finished callback with the right value, or another final status than expected) and
    DUPLICATED (every final ``job_status`` callback after a job's first) results.

    With ``abandon_ok_on`` (an IP address), a job that ended Abandoned is expected, not lost, when the
    last node it was announced Running on is that one (it was running on the killed node, reentrant=False).
    """
    verdict = Verdict(jobs=asked)
    submitted = {int(i) for i in summary["submitted"]}
    missing = set(range(asked)) - submitted
    verdict.lost += len(missing)
    if missing:
        verdict.problems.append(f"{len(missing)} jobs were never submitted: {sorted(missing)[:10]}")
    for key, job in sorted(summary["jobs"].items(), key=lambda item: int(item[0])):
        n = int(key)
        finals = job["finals"]
        if len(finals) > 1:
            verdict.duplicated += len(finals) - 1
            verdict.problems.append(f"job {n}: {len(finals)} final callbacks: "
                                    f"{[(f['status'], f['ip']) for f in finals]}")
        running = [entry[0] for entry in job["running_on"]]
        if (abandon_ok_on is not None and finals and finals[0]["status"] == JobStatus.Abandoned
                and job["status"] == JobStatus.Abandoned and running and running[-1] == abandon_ok_on):
            verdict.abandoned_expected += 1
            continue
        good = [f for f in finals if f["status"] == JobStatus.Finished and f["result"] == expected_result(n)]
        if not good or job["status"] != JobStatus.Finished:
            verdict.lost += 1
            last = finals[-1] if finals else None
            verdict.problems.append(
                f"job {n} lost: final status {job['status']}, callbacks {[(f['status'], f['ip']) for f in finals]}, "
                f"ran on {running}, exception {(last or {}).get('exception')!r}")
    return verdict


def results_per_node(summary: dict[str, Any], names: dict[str, str]) -> str:
    """Finished callbacks per node (by name), to show where the jobs ran around the fault."""
    counts: dict[str, int] = {}
    for job in summary["jobs"].values():
        for final in job["finals"]:
            if final["status"] == JobStatus.Finished:
                name = names.get(final["ip"], str(final["ip"]))
                counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


@dataclass
class Outcome:
    """One row of the table printed at the end of the session."""

    scenario: str
    jobs: int
    lost: int
    duplicated: int
    abandoned_expected: int
    detect: float | None
    detect_how: str | None
    wait_returned: bool | None
    rejoined: float | None
    seconds: float
    per_node: str = ""
    note: str = ""

    @staticmethod
    def header() -> list[str]:
        return ["scenario", "jobs", "lost", "duplicated", "abandoned (expected)", "time to detect",
                "wait() returned", "node back", "results per node", "run time", "notes"]

    def cells(self) -> list[str]:
        detect = "-" if self.detect is None else f"{self.detect:.2f} s ({self.detect_how})"
        rejoined = "-" if self.rejoined is None else f"{self.rejoined:.1f} s"
        return [self.scenario, str(self.jobs), str(self.lost), str(self.duplicated), str(self.abandoned_expected),
                detect, "-" if self.wait_returned is None else str(self.wait_returned), rejoined, self.per_node,
                f"{self.seconds:.0f} s", self.note]


def format_table(outcomes: list[Outcome]) -> str:
    """A Markdown table (it reads as well in a terminal as in the README)."""
    rows = [Outcome.header()] + [o.cells() for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
