"""Logging by the library convention: a client program's logging is its own; dispy's programs share a format.

Each check runs in a fresh interpreter: pytest itself puts handlers on the root logger.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from dispy_core import logsetup
from dispy_core.testing.nodes import free_base_port

CLIENT = textwrap.dedent('''\
    import logging
    import sys

    import dispy


    def compute(n):
        return n


    port = int(sys.argv[1])
    dispy_logger = logging.getLogger("dispy")
    print("null handler", any(type(h) is logging.NullHandler for h in dispy_logger.handlers))

    # The original's loglevel=: dispy's records shown on stderr, though the program configured nothing.
    cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=port, loglevel=dispy.logger.DEBUG)
    print("explicit level", dispy_logger.level)
    dispy.logger.debug("marker one")
    cluster.close()

    dispy_logger.setLevel(logging.ERROR)
    cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=port)  # no loglevel: left alone
    print("level kept", dispy_logger.level)
    print("root handlers", len(logging.getLogger().handlers))
    cluster.close()

    logging.basicConfig(level=logging.INFO, format="APP %(name)s %(message)s")  # the program's own, later
    logging.getLogger("app").info("hello")
    dispy.logger.error("marker two")
    ''')


def test_a_cluster_leaves_the_programs_logging_alone(tmp_path: Path) -> None:
    program = tmp_path / "client.py"
    program.write_text(CLIENT)
    proc = subprocess.run([sys.executable, str(program), str(free_base_port())], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "null handler True" in proc.stdout
    assert f"explicit level {logging.DEBUG}" in proc.stdout
    assert f"level kept {logging.ERROR}" in proc.stdout, proc.stdout  # not reset by the second cluster
    assert "root handlers 0" in proc.stdout, proc.stdout  # no basicConfig by the library
    err = proc.stderr
    assert re.search(r"^\S+ \S+ dispy DEBUG marker one$", err, re.MULTILINE), err
    assert "APP app hello" in err, err  # the program's basicConfig took effect
    assert err.count("marker two") == 1 and "APP dispy marker two" in err, err  # once, by the program's handler


SERVERS = textwrap.dedent('''\
    import asyncio
    import logging
    import sys

    from dispy_core.node import cli as node_cli
    from dispy_core.relay import cli as relay_cli
    from dispy_core.scheduler import cli as scheduler_cli


    def instead_of_serving(coro):
        coro.close()
        logging.getLogger("dispy.check").info("serving %s", program)


    asyncio.run = instead_of_serving
    for program, main, argv in [
            ("dispynode", node_cli.main, ["-i", "127.0.0.1", "--daemon"]),
            ("dispyscheduler", scheduler_cli.main, ["-i", "127.0.0.1", "-n", "127.0.0.1", "--daemon"]),
            ("dispynetrelay", relay_cli.main, ["-i", "127.0.0.1", "--daemon"])]:
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        code = main(argv + sys.argv[1:])
        assert code == 0, (program, code)
    ''')


def _run_servers(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    program = tmp_path / "servers.py"
    program.write_text(SERVERS)
    proc = subprocess.run([sys.executable, str(program), *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_servers_log_in_one_format_or_json(tmp_path: Path) -> None:
    text = _run_servers(tmp_path)
    for program in ("dispynode", "dispyscheduler", "dispynetrelay"):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ dispy.check INFO serving {program}$", text, re.MULTILINE), text
    records = [json.loads(line) for line in _run_servers(tmp_path, "--log_json").splitlines()]
    serving = [r["message"] for r in records if r["logger"] == "dispy.check"]
    assert serving == ["serving dispynode", "serving dispyscheduler", "serving dispynetrelay"]
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)


def test_json_formatter_carries_the_exception_and_role() -> None:
    record = logging.LogRecord("dispy.node", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    record.role = "job"
    entry = json.loads(logsetup.JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"], entry["role"]) == ("ERROR", "dispy.node", "failed x",
                                                                                  "job")
    assert "RuntimeError: boom" in entry["exception"] and re.match(r"\d{4}-\d\d-\d\dT", entry["time"])
    assert logsetup.json_wanted(env={"DISPY_LOG_FORMAT": "JSON"}) and not logsetup.json_wanted(env={})
    assert logsetup.check_format_env({"DISPY_LOG_FORMAT": "yaml"}) is not None
