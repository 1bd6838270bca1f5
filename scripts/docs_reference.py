"""The configuration reference, generated from the code: every option of every command, every site-config key.

Used two ways:

* as an mkdocs hook (``hooks:`` in mkdocs.yml): in a page, a line ``<!-- reference: NAME -->`` is replaced by
  the generated text (``commands``, ``plugins``, ``settings`` or ``environment``), so the published reference
  is always the parsers' and the config module's own;
* from the tests (``tests/unit/test_docs_reference.py``), which check that nothing the code accepts is left out.

The commands are the console scripts of pyproject.toml, so a new command shows up by itself. Each command's
parser comes from its module's ``build_parser()``; for a command that builds its parser inside ``main()``, the
parser is caught when ``main`` calls ``parse_args`` (nothing of the command runs).

Site-config keys other than ``[plugins]`` have no central schema (each plugin reads its own with
``config.get("table.key", default)``), so their meaning is written down here in :data:`SETTINGS`; the tests
scan the code for every key it reads and fail when one is missing here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- reference: (\w+) -->$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------- commands

@dataclass(frozen=True)
class Command:
    """A console script: its name, and the parser its entry point builds."""

    name: str
    entry_point: str
    parser: argparse.ArgumentParser


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser caught")
        self.parser = parser


def console_scripts() -> dict[str, str]:
    """``name -> "module:function"`` from pyproject.toml's ``[project.scripts]``."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data["project"]["scripts"])


def parser_of(entry_point: str) -> argparse.ArgumentParser:
    """The argparse parser behind a console script: ``build_parser()`` if its module has one, else the one its
    ``main`` hands to ``parse_args`` (caught there, before anything runs)."""
    module_name, _, function = entry_point.partition(":")
    module = importlib.import_module(module_name)
    build = getattr(module, "build_parser", None)
    if callable(build):
        parser = build()
        if isinstance(parser, argparse.ArgumentParser):
            return parser
    main: Callable[..., Any] = getattr(module, function)

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Caught(self)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign,assignment]
    argparse.ArgumentParser.parse_known_args = catch  # type: ignore[method-assign,assignment]
    try:
        main([])
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved  # type: ignore[method-assign]
    raise RuntimeError(f"{entry_point} neither has build_parser() nor parses a command line with argparse")


def commands() -> list[Command]:
    return [Command(name, target, parser_of(target)) for name, target in sorted(console_scripts().items())]


def option_actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """``(command path, action)`` for every argument of ``parser`` and of its subcommands, help excepted."""
    prog = parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from option_actions(sub)
            continue
        yield prog, action


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _usage_of(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        names = action.option_strings
    else:
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        names = [f"{option} {metavar}" for option in action.option_strings]
    return ", ".join(f"`{name}`" for name in names)


def _default_of(action: argparse.Action) -> str:
    if isinstance(action, argparse._VersionAction) or action.nargs == 0:
        return ""
    default = action.default
    if default in (None, "", [], argparse.SUPPRESS):
        return ""
    return f"`{default}`"


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.help == argparse.SUPPRESS:
        return "(not listed by `--help`)"
    if not action.help:
        return ""
    text = parser._get_formatter()._expand_help(action)
    if isinstance(action, argparse._AppendAction):
        text += " (repeatable)" if "repeatable" not in text else ""
    return text


def render_parser(parser: argparse.ArgumentParser, level: int = 3) -> str:
    hashes = "#" * level
    lines = [f"{hashes} `{parser.prog}`", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    rows = []
    subcommands: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    sub.description = helps[name]
                subcommands.append(sub)
            continue
        rows.append(f"| {_usage_of(action)} | {_default_of(action)} | {_cell(_help_of(parser, action))} |")
    if rows:
        lines += ["| Option | Default | Meaning |", "|---|---|---|", *rows, ""]
    for sub in subcommands:
        lines.append(render_parser(sub, level + 1))
    return "\n".join(lines)


def render_commands() -> str:
    return "\n".join(render_parser(command.parser) for command in commands())


# ---------------------------------------------------------------------------------------------- site config

@dataclass(frozen=True)
class Setting:
    """A site-config key read by the code: its default (a literal, or ``"module:NAME"`` read from the code) and
    what it means."""

    default: Any
    meaning: str
    read_by: str


def _from_code(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


SETTINGS: dict[str, Setting] = {
    "transport.max_payload": Setting(
        "dispy_core.protocol.session:MAX_PAYLOAD",
        "Bytes one job's arguments, result or provisional result may have. Larger messages travel in 8 MiB "
        "fragments; above this bound the sender refuses, saying why. Clients read it too "
        "(`JobCluster(max_payload=)` overrides it for one cluster).", "client, node, dispyscheduler"),
    "transport.max_tls_handshakes": Setting(
        "dispy_plugins.transport_tcp_ssl.transport:MAX_TLS_HANDSHAKES",
        "TLS handshakes a listener runs at once; more peers are refused at once.", "node, dispyscheduler"),
    "node.max_unauthenticated": Setting(
        "dispy_core.node.server:MAX_UNAUTHENTICATED",
        "Connections that may be proving the secret at once; more are refused at once.", "node"),
    "node.kept_results_limit": Setting(
        "dispy_core.node.kept:KEPT_LIMIT",
        "Bytes of results kept on disk for clients that went away, for `recover_jobs`.", "node"),
    "executor.max_jobs_per_process": Setting(
        "dispy_core.node.server:MAX_JOBS_PER_PROCESS",
        "Upper bound on a client's `jobs_per_process`; 1 forbids reusing job processes.", "node"),
    "executor.max_frame": Setting(
        None,
        "Bytes a job's arguments or result may have between the node and the computation's host process. "
        "Unset: `transport.max_payload` + 1 MiB.", "node (fork and spawn executors)"),
    "executor.start_timeout": Setting(
        60.0, "Seconds a computation's host process may take to load the computation.", "node"),
    "executor.fork.spares": Setting(
        8, "Job processes kept forked ahead of need (an integer of at least 1).", "node (fork executor)"),
    "executor.spawn.spares": Setting(
        2, "Job processes kept started ahead of need (an integer of at least 1).", "node (spawn executor)"),
    "executor.fork.zygote": Setting(
        True, "A fork server beside the computation's host forks the job processes; false: the host forks "
        "them itself.", "node (fork executor)"),
    "executor.spawn.zygote": Setting(
        True, "Read by the spawn executor too; it starts fresh interpreters, so a fork server plays no part.",
        "node (spawn executor)"),
    "executor.cgroup": Setting(
        True, "Make a cgroup per computation where the node can (cgroup v2, writable), killed whole when the "
        "computation ends; false: never.", "node"),
    "executor.max_memory": Setting(
        None, "Ceiling of a job's memory (`\"4g\"`, `\"512m\"` or bytes): a client's `job_limits` get the lower "
        "of the two, and a job that asks none gets this. Unset: no limit.", "node"),
    "executor.max_cpu_time": Setting(
        None, "Ceiling of a job's CPU time in seconds, as `max_memory`. Unset: no limit.", "node"),
    "executor.max_open_files": Setting(
        None, "Ceiling of the descriptors a job's process may have open at once, as `max_memory`. Unset: no "
        "limit.", "node"),
}
"""Every site-config key outside ``[plugins]`` that the code reads (the tests keep this complete)."""


def setting_default(setting: Setting) -> Any:
    default = setting.default
    if isinstance(default, str) and ":" in default and "." in default.partition(":")[0]:
        return _from_code(default)
    return default


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"`{value}` ({value >> 20} MiB)" if value < 1 << 30 else f"`{value}` ({value >> 30} GiB)"
    return f"`{value}`"


PLUGIN_MEANINGS = {
    "transport": "moves bytes between peers (group `dispy.transport`); `tcp` is TCP, or TLS with certificates",
    "discovery": "finds nodes on the network (group `dispy.discovery`)",
    "scheduler": "a client's choice of node for each job (group `dispy.scheduler`)",
    "policy": "dispyscheduler's choice of computation for each free CPU (group `dispy.policy`)",
    "serializer": "turns arguments and results into bytes (group `dispy.serializer`)",
    "executors": "how a node runs jobs (group `dispy.executor`); the first that can run on this platform is used",
    "extras": "more plugins to load, from the group `dispy.plugins`",
}


def render_plugins() -> str:
    from dispy_core.config import PLUGIN_KEYS, Config

    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    rows = ["| Key | Default | Environment | Meaning |", "|---|---|---|---|"]
    for key in PLUGIN_KEYS:
        rows.append(f"| `plugins.{key}` | {_toml(defaults[key])} | `DISPY_{key.upper()}` | "
                    f"{_cell(PLUGIN_MEANINGS.get(key, ''))} |")
    return "\n".join(rows) + "\n"


def render_settings() -> str:
    rows = ["| Key | Default | Read by | Meaning |", "|---|---|---|---|"]
    for key, setting in SETTINGS.items():
        rows.append(f"| `{key}` | {_toml(setting_default(setting))} | {setting.read_by} | {_cell(setting.meaning)} |")
    return "\n".join(rows) + "\n"


ENVIRONMENT: dict[str, str] = {
    "DISPY_CONFIG": "The site config file to read (then no other is looked for; it must exist).",
    "DISPY_SECRET": "The secret of `dispynode` and `dispynetrelay` without `-s`, and of programs (and `dispy_cmd`) "
                    "that give none; keeps it off the command line (and out of `ps`).",
    "DISPY_NODE_SECRET": "`dispyscheduler --node_secret`.",
    "DISPY_ADMIN_SECRET": "`dispyadmin --admin_secret`: the nodes' admin secret, kept out of the process list.",
    "DISPY_LOG_FORMAT": "`json` makes `dispynode`, `dispyscheduler`, `dispynetrelay` and `dispy_cmd` log one JSON "
                        "object per line (as `--log_json`; the node's host and job processes follow); `text` is "
                        "the default.",
    "DISPY_CLUSTER_SECRET": "`dispyscheduler --cluster_secret`.",
    "DISPY_HOST": "Addresses (comma separated) a `dispynode` without `-i` binds; for a program without `host=`, "
                  "the addresses it searches for nodes from.",
    "DISPY_NODES": "Nodes (comma separated) of a program that gives no `nodes=`.",
    "DISPY_MALLOC_TUNING": "`0` leaves glibc's malloc thresholds alone (by default they are raised, so large "
                           "buffers are reused).",
    "DISPY_HTTPD_TOKEN": "The access token (a password of at least 8 characters) of `dispy.httpd.DispyHTTPServer` "
                         "when the program gives no `token=`.",
    "DISPY_JOB_TOKEN": "Set by the node in every job process, to find what the job started; not for users to set.",
}
ENVIRONMENT.update({f"DISPY_{key.upper()}": f"Overrides `plugins.{key}` of the site config." for key in (
    "transport", "discovery", "scheduler", "policy", "serializer", "executors", "extras")})


def render_environment() -> str:
    rows = ["| Variable | Meaning |", "|---|---|"]
    rows += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in sorted(ENVIRONMENT.items())]
    return "\n".join(rows) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "commands": render_commands,
    "plugins": render_plugins,
    "settings": render_settings,
    "environment": render_environment,
}


def expand(markdown: str) -> str:
    """``markdown`` with each ``<!-- reference: NAME -->`` line replaced by its generated text."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in RENDERERS:
            raise ValueError(f"unknown reference block {name!r}; known: {', '.join(RENDERERS)}")
        return RENDERERS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs hook: expand the reference blocks of every page."""
    return expand(markdown)


if __name__ == "__main__":  # print a page with its blocks expanded: python scripts/docs_reference.py PAGE.md
    sys.stdout.write(expand(Path(sys.argv[1]).read_text(encoding="utf-8")))
