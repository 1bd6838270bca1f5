"""The installed commands as a new user meets them: --version, python -m, one-line errors, --config TOML,
the node console's errors, JSON logs from a real node and its job processes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

import dispy
from dispy_core import __version__, cmd
from dispy_core import cli as dispy_cli
from dispy_core.admin import cli as admin_cli
from dispy_core.node import cli as node_cli
from dispy_core.node import nodeconfig
from dispy_core.relay import cli as relay_cli
from dispy_core.scheduler import cli as scheduler_cli
from dispy_core.testing.nodes import NodeProcess

BIN = Path(sys.executable).parent


def run_all(argvs: list[list[str]], timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run the command lines side by side (each is mostly interpreter start-up)."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True) for argv in argvs]
    done = []
    for argv, proc in zip(argvs, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def test_commands_have_version_and_python_m_forms() -> None:
    """The installed scripts and ``python -m`` (as a new user types them; the other commands: below)."""
    argvs = [[str(BIN / "dispynode"), "--version"], [str(BIN / "dispy_cmd"), "--version"],
             [sys.executable, "-m", "dispy", "--version"], [sys.executable, "-m", "dispy_core.node", "--version"],
             [str(BIN / "dispynode"), "--cpus", "many"]]
    *versions, bad = run_all(argvs)
    for name, proc in zip(["dispynode", "dispy_cmd", "dispy", "dispynode"], versions, strict=True):
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.strip() == f"{name} {__version__} (neodispy)", (name, proc.stdout, proc.stderr)
    assert bad.returncode == 2 and bad.stderr == ("dispynode: error: argument -c/--cpus: invalid int value: 'many' "
                                                  "(dispynode --help lists the options)\n"), bad.stderr


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "dispynode": node_cli.build_parser, "dispyscheduler": scheduler_cli.build_parser,
    "dispynetrelay": relay_cli.build_parser, "dispy_cmd": cmd.build_parser, "dispyadmin": admin_cli.build_parser,
    "dispy": lambda: dispy_cli.build_parser()[0]}


def one_line_exit(capsys: pytest.CaptureFixture[str], call: Callable[[], object]) -> str:
    """The one line ``call`` writes to stderr as it exits with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        call()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and err.endswith("\n"), err
    return err


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_command_has_version_and_one_line_errors(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        PARSERS[name]().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"{name} {__version__} (neodispy)\n"
    argv = {"dispy_cmd": ["prog.py"], "dispy": ["plugins"]}.get(name, [])  # what each requires
    err = one_line_exit(capsys, lambda: PARSERS[name]().parse_args([*argv, "--no_such_option"]))
    assert err.startswith(f"{name}: error: unrecognized arguments: --no_such_option") and "--help" in err, err


def test_demo_with_an_unknown_executor_names_the_installed_ones(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_exit(capsys, lambda: dispy_cli.main(["demo", "--executor", "bogus"]))
    assert err.startswith("dispy demo: error: --executor: no executor plugin named 'bogus' is installed; "
                          "installed: fork, spawn"), err
    err = one_line_exit(capsys, lambda: dispy_cli.main(["bogus"]))
    assert err.startswith("dispy: error: argument command: invalid choice: 'bogus'"), err


def test_save_config_as_toml_reads_back_to_the_same_options(tmp_path: Path) -> None:
    line = ["-i", "127.0.0.1", "-i", "::1", "--cpus", "1", "--name", 'odd "name"\\ with\ttab', "--zombie_interval",
            "2.5", "--client_shutdown", "--max_file_size", "10m", "-s", "the-secret"]
    direct, via_toml, again = tmp_path / "direct.json", tmp_path / "node.toml", tmp_path / "again.json"
    for path in (direct, via_toml):  # what dispynode --save_config PATH does
        args, parser = node_cli.parse_args([*line, "--save_config", str(path)])
        nodeconfig.save_options(str(path), nodeconfig.saved_options(args, parser))
    text = via_toml.read_text()
    saved = tomllib.loads(text)
    assert saved["host"] == ["127.0.0.1", "::1"] and saved["name"] == 'odd "name"\\ with\ttab' and saved["cpus"] == 1
    assert "the-secret" not in text and "not saved" in text
    args, parser = node_cli.parse_args(["--config", str(via_toml), "--save_config", str(again)])
    nodeconfig.save_options(str(again), nodeconfig.saved_options(args, parser))
    assert json.loads(again.read_text()) == json.loads(direct.read_text())


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.toml", None, "cannot be read: No such file or directory"),
    ("bad.toml", "cpus = \n", "is not valid TOML"),
    ("site.toml", '[plugins]\ntransport = "tcp"\n', "[plugins] is a section of the site config"),
    ("node.conf", "cpus = 'x'\n", "option 'cpus': invalid int value: 'x'"),  # no extension: TOML by content
    ("node.conf", '{"cpus": "x"}', "option 'cpus': invalid int value: 'x'"),  # no extension: JSON by content
    ("node.json", '{"no_such": 1}', "unknown option 'no_such'"),
])
def test_config_file_problems_are_one_line_naming_the_file(tmp_path: Path, name: str, content: str | None,
                                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    err = one_line_exit(capsys, lambda: node_cli.parse_args(["--config", str(path)]))
    assert err.startswith(f"dispynode: error: --config {str(path)!r}") and message in err, err


def logs_from_the_job(n: int) -> int:
    dispynode_logger.info("job %d logs", n)  # type: ignore[name-defined]  # noqa: F821 - a node's global
    return n


def test_node_from_toml_with_console_errors_and_json_logs(node_factory: Callable[..., NodeProcess],
                                                          tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('# the node\nname = "tomlnode"\ncpus = 1\nlog_json = true\n')
    node = node_factory("--config", str(config), daemon=False)
    assert "dispynode ready: tomlnode with 1 CPUs" in node.log()

    out = node.command("cpus x", "cpus not changed")
    (said,) = [line for line in out.splitlines() if "cpus not changed" in line]  # log lines may come between
    assert said == "cpus not changed: 'x' is not a whole number; usage: cpus N (0 = all, negative = all but N)"
    node.command("status", "dispynode tomlnode")  # the console goes on

    with dispy.JobCluster(logs_from_the_job, nodes=["127.0.0.1"], dispy_port=node.base_port) as cluster:
        job = cluster.submit(7)
        assert job is not None
        assert job(timeout=60) == 7, job.exception
    node.wait_log('"job 7 logs"')
    records = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    assert any(r["logger"].startswith("dispy.node") and r["level"] == "INFO" for r in records), node.log()
    (from_job,) = [r for r in records if r["message"] == "job 7 logs"]
    assert from_job["role"] == "job" and from_job["logger"] == "dispynode" and from_job["pid"] != node.proc.pid
    assert "Traceback" not in node.log()
