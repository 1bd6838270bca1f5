"""``dispy_cmd``: run a program on the cluster from the shell, one job per ``-a`` argument string.

    dispy_cmd ./simulate.py -a "--seed 1" -a "--seed 2" -n node1 -n node2 --secret s

Each job's exit status, stdout and stderr are printed in submission order. The exit status of
``dispy_cmd`` is 0 only if every job ran and exited with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import dispy
from dispy_core.cliparse import CommandParser, add_version
from dispy_core.logsetup import configure_program


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="dispy_cmd", description="Run a program on dispy nodes, one job per -a argument string.")
    add_version(parser)
    parser.add_argument("program", help="path of the program to run (sent to the nodes), or a command on them")
    parser.add_argument("-a", "--args", action="append", default=[], metavar="ARGS",
                        help='arguments of one job, split like a shell does (repeatable: one job each; '
                             'none: one job without arguments)')
    parser.add_argument("-n", "--nodes", action="append", default=[], metavar="HOST",
                        help="node host name or address (repeatable; default $DISPY_NODES)")
    parser.add_argument("-p", "--dispy_port", type=int, default=None,
                        help="base port (nodes listen on it + 1; default dispy.config.DispyPort)")
    parser.add_argument("-s", "--secret", default="", help="the nodes' shared secret (default $DISPY_SECRET)")
    parser.add_argument("--certfile", default=None, help="TLS certificate (PEM)")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM), if not in certfile")
    parser.add_argument("--depends", action="append", default=[], metavar="FILE",
                        help="a file every job needs, sent to each node (repeatable)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up (and cancel what is left) after this many seconds")
    parser.add_argument("--node_timeout", type=float, default=60.0,
                        help="fail if no node is usable within this many seconds (default 60)")
    parser.add_argument("--no_progress", action="store_true",
                        help="no live progress bar (it is drawn on stderr only when stderr is a terminal)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the jobs and print their outcome; the return value is the process's exit status."""
    out = out or sys.stdout
    opts = build_parser().parse_args(argv)
    for path in opts.depends:
        if not os.path.isfile(path):
            print(f"dispy_cmd: --depends {path!r} is not a readable file", file=sys.stderr)
            return 2
    job_args = [shlex.split(text) for text in opts.args] or [[]]
    configure_program(debug=opts.debug, level=None if opts.debug else logging.WARNING)  # a program: its log
    try:
        cluster = dispy.JobCluster(opts.program, nodes=opts.nodes or None, depends=opts.depends,
                                   dispy_port=opts.dispy_port, secret=opts.secret, certfile=opts.certfile,
                                   keyfile=opts.keyfile, loglevel=logging.DEBUG if opts.debug else logging.WARNING)
    except (ValueError, OSError) as exc:
        print(f"dispy_cmd: {exc}", file=sys.stderr)
        return 2
    try:
        if not _wait_for_nodes(cluster, opts.node_timeout):
            failed = cluster.status()["failed_nodes"]
            why = "; ".join(f"{addr}: {reason}" for addr, reason in failed.items()) or "no node answered"
            print(f"dispy_cmd: no usable node ({why})", file=sys.stderr)
            cluster.close(timeout=0, terminate=True)
            return 3
        jobs = [cluster.submit(*args) for args in job_args]
        finished = cluster.wait(opts.timeout, progress=not opts.no_progress)
        cluster.close(timeout=0, terminate=True)
    except KeyboardInterrupt:
        cluster.close(timeout=0, terminate=True)
        return 130
    failures = 0 if finished else 1
    for number, (args, job) in enumerate(zip(job_args, jobs, strict=True), 1):
        failures += _report(out, number, args, job)
    return 1 if failures else 0


def _wait_for_nodes(cluster: dispy.JobCluster, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.status()
        if status["nodes"]:
            return True
        if not status["discovering"]:
            return False  # every listed node was tried; none can come later (no broadcast discovery)
        time.sleep(0.05)
    return bool(cluster.status()["nodes"])


def _report(out: TextIO, number: int, args: list[str], job: dispy.DispyJob | None) -> int:
    """Print one job; 1 if it failed (not run, not finished, or a non-zero exit status)."""
    shown = shlex.join(args)
    if job is None:
        print(f"=== job {number} ({shown}): not submitted", file=out)
        return 1
    status = dispy.DispyJob
    names: dict[int, str] = {status.Finished: "finished", status.Cancelled: "cancelled",
                             status.Terminated: "terminated",
                             status.Abandoned: "abandoned"}
    name = names.get(job.status, "not finished")
    header = f"=== job {number} ({shown}) on {job.ip_addr or '-'}: {name}"
    ok = job.status == status.Finished and job.result == 0
    if job.status == status.Finished:
        header += f", exit status {job.result}"
    print(header, file=out)
    for label, data in (("stdout", job.stdout), ("stderr", job.stderr)):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
        if text:
            print(f"--- {label}:", file=out)
            print(text.rstrip("\n"), file=out)
    if job.exception and job.status != status.Finished:
        print(f"--- error: {str(job.exception).rstrip()}", file=out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
