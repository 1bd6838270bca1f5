"""``dispy``: the project's own command: ``dispy plugins`` and ``dispy demo``."""

from __future__ import annotations

import argparse
import os
import sys

from dispy_core import __version__
from dispy_core.cliparse import CommandParser, add_version
from dispy_core.config import load_config
from dispy_core.errors import DispyError
from dispy_core.pluginmanager import ROLE_GROUPS, installed_plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print each role's installed plugins with versions, marking the one the site config selects."""
    try:
        config = load_config("client")
    except DispyError as exc:
        print(f"dispy: error: {exc}", file=sys.stderr)
        return 2
    selected = {"transport": [config.transport], "discovery": [config.discovery],
                "scheduler": [config.scheduler], "policy": [config.policy], "serializer": [config.serializer],
                "executor": list(config.executors), "extra": list(config.extras)}
    print(f"dispy {__version__}; configuration from {config.source}")
    for role in ROLE_GROUPS:
        plugins = installed_plugins(role)
        print(f"{role} ({ROLE_GROUPS[role]}):")
        if not plugins:
            print("    (none installed)")
        for plugin in plugins:
            mark = "*" if plugin.name in selected[role] else " "
            order = ""
            if role == "executor" and plugin.name in selected[role]:
                order = f"  [preference {selected[role].index(plugin.name) + 1}]"
            print(f"  {mark} {plugin.name:<14} {plugin.distribution} {plugin.version}  ({plugin.target}){order}")
        missing = [name for name in selected[role] if name not in {p.name for p in plugins}]
        for name in missing:
            print(f"  ! {name:<14} selected but NOT installed")
    print("(* = selected)")
    secret = "set (DISPY_SECRET)" if os.environ.get("DISPY_SECRET") else \
        "NOT set: clusters and nodes without --secret / secret= accept anyone who can reach them"
    print(f"security: secret {secret}; TLS {'with ' + config.certfile if config.certfile else 'not configured'}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and its ``demo`` subcommand's (whose errors name ``dispy demo``)."""
    parser = CommandParser(prog="dispy", description="dispy: run Python on many machines")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list installed plugins per role and which are selected")
    demo = sub.add_parser("demo", help="start a local node and run a real computation on it")
    demo.add_argument("--jobs", type=int, default=16, help="number of jobs (default 16)")
    demo.add_argument("--executor", default="fork", help="node executor plugin (fork or spawn)")
    return parser, demo


def main(argv: list[str] | None = None) -> int:
    parser, demo = build_parser()
    args = parser.parse_args(argv)
    if args.command == "plugins":
        return cmd_plugins(args)
    executors = [plugin.name for plugin in installed_plugins("executor")]
    if args.executor not in executors:
        demo.error(f"--executor: no executor plugin named {args.executor!r} is installed; installed: "
                   f"{', '.join(executors) or 'none'}")
    from dispy_core.demo import run_demo

    return run_demo(args.jobs, args.executor)



if __name__ == "__main__":
    sys.exit(main())
