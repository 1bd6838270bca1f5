"""``dispynode``: the command that serves this machine's CPUs to dispy clients."""

from __future__ import annotations

import argparse
import ast
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from typing import Any

from dispy_core.cliparse import CommandParser, add_log_options, add_version
from dispy_core.config import load_config
from dispy_core.errors import DispyError
from dispy_core.logsetup import configure_program
from dispy_core.malloc_tuning import tune_malloc
from dispy_core.node import nodeconfig
from dispy_core.node.console import Console
from dispy_core.node.server import ZOMBIE_INTERVAL, NodeOptions, NodeServer, resolve_cpus
from dispy_core.node.service import ServiceWindow, parse_hhmm
from dispy_core.ratelog import Throttled
from dispy_core.sizes import parse_size

DEFAULT_DISPY_PORT = 9700

log = logging.getLogger("dispy.node")

NOT_IMPLEMENTED: tuple[str, ...] = ()
"""Options accepted so that old command lines still start; each logs that it has no effect yet."""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="dispynode", description="Run dispy jobs on this machine.")
    add_version(parser)
    parser.add_argument("-c", "--cpus", type=int, default=0,
                        help="CPUs to serve: 0 = all, negative = all but that many")
    parser.add_argument("-i", "--host", action="append", default=[],
                        help="address to bind (repeatable; default: $DISPY_HOST, else every address, IPv4 and IPv6)")
    parser.add_argument("--ext_host", action="append", default=[],
                        help="address clients reach this node at, for NAT (repeatable, paired with -i by position)")
    parser.add_argument("-p", "--dispy_port", type=int, default=DEFAULT_DISPY_PORT,
                        help="base port; the node listens on this + 1 (default 9700 -> 9701)")
    parser.add_argument("--ipv4_udp_multicast", action="store_true",
                        help="answer and announce on the IPv4 multicast group instead of by broadcast")
    parser.add_argument("--name", default="", help="node name (default: host name)")
    parser.add_argument("--dest_path_prefix", default="", help="where computations' files live")
    parser.add_argument("--scheduler_node", "--scheduler_host", dest="scheduler_node", action="append",
                        default=[], help="announce this node to that client or scheduler (HOST or HOST:PORT, "
                                         "repeatable) until it connects")
    parser.add_argument("-s", "--secret", default=None,
                        help="shared secret clients must prove (default: $DISPY_SECRET or none)")
    parser.add_argument("--admin_secret", default=None, help="secret for admin operations (dispyadmin)")
    parser.add_argument("--certfile", default=None, help="TLS certificate (PEM)")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM), if not in certfile")
    parser.add_argument("--cafile", default=None, help="CA certificates to verify peers (default: certfile)")
    parser.add_argument("--max_file_size", default="0",
                        help="largest file transferred either way (k/m/g suffixes; 0 = none)")
    parser.add_argument("--zombie_interval", type=float, default=ZOMBIE_INTERVAL,
                        help="minutes a client may stay silent (answering no ping) before it is presumed dead "
                             f"and its computations are closed (default {ZOMBIE_INTERVAL:g}; 0 = never)")
    parser.add_argument("--ping_interval", type=float, default=None,
                        help="announce this node every SEC seconds (default: only at start)")
    parser.add_argument("--serve", type=int, default=0,
                        help="serve this many computations, then quit (0 = no limit)")
    parser.add_argument("--client_shutdown", action="store_true",
                        help="let a computation's setup, cleanup or job stop the node with dispynode_shutdown()")
    parser.add_argument("--unsafe_setup", action="store_true",
                        help="accepted for compatibility: setup and cleanup still run in the computation's "
                             "host process, never in the node")
    parser.add_argument("--force_cleanup", action="store_true",
                        help="delete transferred files even if the client asked cleanup=False")
    parser.add_argument("--clean", action="store_true", help="remove what a previous node left behind")
    parser.add_argument("--service_start", default=None, metavar="HH:MM", help="daily: start accepting jobs")
    parser.add_argument("--service_stop", default=None, metavar="HH:MM", help="daily: stop accepting new jobs")
    parser.add_argument("--service_end", default=None, metavar="HH:MM", help="daily: terminate running jobs")
    parser.add_argument("--init", default=None, metavar="FILE",
                        help="Python file whose init() runs before each computation's setup, in the "
                             "computation's host process (whose globals its jobs see); close() after cleanup")
    parser.add_argument("--daemon", action="store_true", help="no interactive console")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="read options from this TOML (or JSON) file of option names and values "
                             "(the command line overrides them)")
    parser.add_argument("--save_config", default=None, metavar="FILE",
                        help="write the options to this file (TOML if it ends in .toml, else JSON; without "
                             "secrets) and exit")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    add_log_options(parser)
    parser.add_argument("--msg_timeout", type=float, default=10.0, help="socket timeout in seconds")
    parser.add_argument("--executor", default=None, help="executor plugin(s), comma separated (e.g. spawn)")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The command line over the ``--config`` file's options."""
    parser = build_parser()
    return nodeconfig.parse_with_config(parser, argv), parser


def _check_init_file(path: str, parser: argparse.ArgumentParser) -> str:
    """The ``--init`` file's absolute path, once it is known to be readable Python (parsed, not run)."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--init {path!r} cannot be read: {exc}")
    except SyntaxError as exc:
        parser.error(f"--init {path!r} is not valid Python: {exc}")
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if "init" not in names:
        parser.error(f"--init {path!r} defines no init() function")
    return os.path.abspath(path)


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> NodeOptions:
    try:
        resolve_cpus(args.cpus)
        max_file_size = parse_size(args.max_file_size)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.dispy_port <= 65534:
        parser.error(f"--dispy_port must be between 0 and 65534, not {args.dispy_port}")
    if args.msg_timeout <= 0:
        parser.error(f"--msg_timeout must be positive, not {args.msg_timeout}")
    if args.zombie_interval < 0:
        parser.error(f"--zombie_interval must be >= 0 minutes (0 = never), not {args.zombie_interval}")
    if args.ping_interval is not None and args.ping_interval <= 0:
        parser.error(f"--ping_interval must be positive, not {args.ping_interval}")
    if args.serve < 0:
        parser.error(f"--serve must be >= 0 (0 = no limit), not {args.serve}")
    for option in ("certfile", "keyfile", "cafile"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} is not a readable file")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    hosts = args.host or [h.strip() for h in os.environ.get("DISPY_HOST", "").split(",") if h.strip()]
    for host in hosts:
        try:
            ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except (OSError, UnicodeError) as exc:
                parser.error(f"--host {host!r} is neither an IP address nor a name that resolves: {exc}")
    if len(args.ext_host) > max(1, len(hosts)):
        parser.error("--ext_host is paired with --host by position: give at most one per --host")
    try:
        times = {name: parse_hhmm(getattr(args, f"service_{name}")) if getattr(args, f"service_{name}") else None
                 for name in ("start", "stop", "end")}
        service = ServiceWindow(**times)
    except ValueError as exc:
        parser.error(str(exc))
    init_file = _check_init_file(args.init, parser) if args.init else ""
    secret = args.secret if args.secret is not None else os.environ.get("DISPY_SECRET", "")
    return NodeOptions(host=hosts[0] if hosts else "", hosts=hosts, ext_hosts=list(args.ext_host),
                       ipv4_udp_multicast=args.ipv4_udp_multicast, ping_interval=args.ping_interval,
                       scheduler_nodes=list(args.scheduler_node or []),
                       port=args.dispy_port + 1 if args.dispy_port else 0,
                       cpus=args.cpus, name=args.name, dest_path_prefix=args.dest_path_prefix, secret=secret,
                       admin_secret=args.admin_secret or "", max_file_size=max_file_size,
                       msg_timeout=args.msg_timeout, clean=args.clean, serve=args.serve,
                       zombie_interval=args.zombie_interval, client_shutdown=args.client_shutdown,
                       force_cleanup=args.force_cleanup, init_file=init_file, service=service)


def log_compatibility(args: argparse.Namespace) -> None:
    """Say which accepted options do nothing (yet), so an old command line's user is not misled."""
    for name in NOT_IMPLEMENTED:
        if getattr(args, name) not in (None, False, []):
            log.warning("--%s is accepted but not implemented yet; ignored", name)
    if args.unsafe_setup:
        log.info("--unsafe_setup is accepted for compatibility only: setup and cleanup still run in the "
                 "computation's host process, never in the node process")


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """At the fd limit asyncio logs every failed accept() with a traceback, many a second; say it once per
    period instead, with what to do (asyncio itself retries accepting a second later)."""
    throttled = Throttled(log, period=30.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            throttled.warning("cannot accept connections: %s (raise the open files limit, ulimit -n, or lower "
                              "node.max_unauthenticated)", exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def run_node(server: NodeServer, interactive: bool = False) -> None:
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, server.request_stop)
    console: Console | None = None
    try:
        await server.start()
        print(f"dispynode ready: {server.name} with {server.cpus} CPUs", flush=True)
        if interactive:
            console = Console(server)
            console.attach(loop)
        await server.serve_forever()
    finally:
        if console is not None:
            console.detach()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # also exported to the host and job processes through the environment
    args, parser = parse_args(argv)
    options = options_from_args(args, parser)
    if args.save_config:
        try:
            nodeconfig.save_options(args.save_config, nodeconfig.saved_options(args, parser))
        except OSError as exc:
            print(f"dispynode: error: cannot write {args.save_config!r}: {exc}", file=sys.stderr)
            return 1
        print(f"dispynode: options saved to {args.save_config} (secrets are not saved)")
        return 0
    configure_program(debug=args.debug, json_logs=args.log_json)
    log_compatibility(args)
    overrides: dict[str, Any] = dict(certfile=args.certfile, keyfile=args.keyfile, cafile=args.cafile,
                                        msg_timeout=args.msg_timeout, max_file_size=options.max_file_size)
    if args.executor:
        overrides["executors"] = tuple(n.strip() for n in args.executor.split(",") if n.strip())
    try:
        config = load_config("node", **overrides)
        server = NodeServer(options, config)
    except (DispyError, ValueError) as exc:
        print(f"dispynode: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_node(server, interactive=not args.daemon))
    except OSError as exc:
        print(f"dispynode: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
