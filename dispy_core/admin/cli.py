"""``dispyadmin``: administer dispynodes with their ``--admin_secret``, from a web page or the command line.

Without an operation it serves the admin page (loopback by default) until SIGTERM or SIGINT. With one
(``--info``, ``--set-cpus``, ``--service_start/--service_stop/--service_end``, ``--no-service``, ``--serve``,
``--shutdown``, ``--shutdown-now``) it runs it on every node, prints one line per node and exits: 0 if every
node did it, 1 if one could not. Nodes are the ones named with ``-n``; without ``-n``, those discovery finds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import typing
from typing import Any

from dispy_core.admin.client import NodeAddress, parse_node
from dispy_core.admin.nodes import AdminNodes, summary
from dispy_core.cliparse import add_version
from dispy_core.config import load_config
from dispy_core.errors import DispyError
from dispy_core.node.service import ServiceWindow, parse_hhmm

log = logging.getLogger("dispy.admin")

DEFAULT_DISPY_PORT = 9700
DEFAULT_HTTP_PORT = 8182
SECRET_ENV = "DISPY_ADMIN_SECRET"


class _Parser(argparse.ArgumentParser):
    """A bad option: one line saying what is wrong (not the whole usage), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dispyadmin", description="Administer dispynodes with their admin secret: "
                                     "CPUs, service window, computations to serve, shutdown.")
    add_version(parser)
    parser.add_argument("-n", "--node", action="append", default=[], metavar="HOST[:PORT]",
                        help="a node to administer (repeatable; default port: --dispy_port + 1); without -n, "
                             "nodes are discovered")
    parser.add_argument("--admin_secret", default=None,
                        help=f"the nodes' --admin_secret (default: ${SECRET_ENV}; the environment keeps it out of "
                             "the process list)")
    parser.add_argument("-s", "--secret", default=None,
                        help="the nodes' client secret, used only to sign discovery pings (default: $DISPY_SECRET)")
    parser.add_argument("-i", "--host", action="append", default=[],
                        help="discover through the interface with this address (repeatable; default: $DISPY_HOST)")
    parser.add_argument("-p", "--dispy_port", type=int, default=DEFAULT_DISPY_PORT,
                        help="the nodes' base port (default 9700: nodes listen on 9701)")
    parser.add_argument("--node_certfile", default=None, help="TLS certificate for the nodes (PEM)")
    parser.add_argument("--node_keyfile", default=None, help="its private key, if not in --node_certfile")
    parser.add_argument("--node_cafile", default=None, help="CA certificates to verify the nodes")
    parser.add_argument("--msg_timeout", type=float, default=10.0, help="seconds a node has to answer")
    web = parser.add_argument_group("the web page (without an operation)")
    web.add_argument("--http_host", default="127.0.0.1",
                     help="address the page is served at (default 127.0.0.1; any other needs the token)")
    web.add_argument("--http_port", type=int, default=DEFAULT_HTTP_PORT,
                     help=f"port of the page (default {DEFAULT_HTTP_PORT}; 0: any free one)")
    web.add_argument("--token", default=None,
                     help="the page's access token (default: one is made when the page is not on loopback)")
    web.add_argument("--certfile", default=None, help="serve the page over HTTPS with this certificate (PEM)")
    web.add_argument("--keyfile", default=None, help="its private key, if not in --certfile")
    web.add_argument("--poll_sec", type=float, default=5.0, help="seconds between the page's updates")
    ops = parser.add_argument_group("operations (run on every node, then exit)")
    ops.add_argument("--info", action="store_true", help="print each node's state")
    ops.add_argument("--set-cpus", "--set_cpus", dest="set_cpus", type=int, default=None, metavar="N",
                     help="serve N CPUs (0 = all, negative = all but N)")
    ops.add_argument("--service_start", default=None, metavar="HH:MM", help="set the daily service window: start")
    ops.add_argument("--service_stop", default=None, metavar="HH:MM", help="... stop accepting new jobs")
    ops.add_argument("--service_end", default=None, metavar="HH:MM", help="... terminate running jobs")
    ops.add_argument("--no-service", "--no_service", dest="no_service", action="store_true",
                     help="remove the service window (always in service)")
    ops.add_argument("--serve", type=int, default=None, metavar="N",
                     help="serve N more computations, then quit (0 = no limit)")
    ops.add_argument("--shutdown", action="store_true", help="stop the node after its running jobs")
    ops.add_argument("--shutdown-now", "--shutdown_now", dest="shutdown_now", action="store_true",
                     help="stop the node now, terminating running jobs")
    ops.add_argument("--json", action="store_true", help="print each node's state as a JSON object per line")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[NodeAddress], str]:
    """The nodes and the admin secret; any bad option ends the program (exit 2) with one line saying why."""
    if not 0 < args.dispy_port < 65535:
        parser.error(f"--dispy_port must be between 1 and 65534, not {args.dispy_port}")
    try:
        nodes = [parse_node(text, args.dispy_port + 1) for text in args.node]
    except ValueError as exc:
        parser.error(str(exc))
    secret = args.admin_secret if args.admin_secret is not None else os.environ.get(SECRET_ENV, "")
    if not secret:
        parser.error(f"no admin secret: give --admin_secret or set ${SECRET_ENV} (the nodes' --admin_secret)")
    if args.msg_timeout <= 0:
        parser.error(f"--msg_timeout must be positive, not {args.msg_timeout}")
    if args.poll_sec < 0.5:
        parser.error(f"--poll_sec must be at least 0.5, not {args.poll_sec}")
    if not 0 <= args.http_port < 65536:
        parser.error(f"--http_port must be between 0 and 65535, not {args.http_port}")
    if args.token is not None and len(args.token) < 8:
        parser.error("--token must have at least 8 characters")
    for option in ("certfile", "keyfile", "node_certfile", "node_keyfile", "node_cafile"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} is not a readable file")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.node_keyfile and not args.node_certfile:
        parser.error("--node_keyfile needs --node_certfile")
    if args.serve is not None and args.serve < 0:
        parser.error(f"--serve must be >= 0 (0 = no limit), not {args.serve}")
    if args.shutdown and args.shutdown_now:
        parser.error("give --shutdown or --shutdown-now, not both")
    service = service_times(args)
    if service is not None and args.no_service:
        parser.error("--no-service removes the window: give it without --service_start/stop/end")
    if service is not None:
        try:
            ServiceWindow(**{k: parse_hhmm(v) if v else None for k, v in service.items()})
        except ValueError as exc:
            parser.error(str(exc))
    return nodes, secret


def service_times(args: argparse.Namespace) -> dict[str, str] | None:
    times = {"start": args.service_start, "stop": args.service_stop, "end": args.service_end}
    return None if all(v is None for v in times.values()) else {k: v or "" for k, v in times.items()}


def operations(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The one-shot operations asked for, in the order they run (shutdown last)."""
    ops: list[tuple[str, dict[str, Any]]] = []
    if args.set_cpus is not None:
        ops.append(("set_cpus", {"cpus": args.set_cpus}))
    service = service_times(args)
    if service is not None:
        ops.append(("set_service", service))
    if args.no_service:
        ops.append(("set_service", {"start": "", "stop": "", "end": ""}))
    if args.serve is not None:
        ops.append(("serve", {"computations": args.serve}))
    if args.shutdown or args.shutdown_now:
        ops.append(("shutdown", {"wait": not args.shutdown_now}))
    if args.info and not ops:
        ops.append(("info", {}))
    return ops


def run_operations(nodes: AdminNodes, ops: list[tuple[str, dict[str, Any]]], as_json: bool) -> int:
    if not nodes.nodes:
        print("dispyadmin: no node to administer (name nodes with -n, or start them where discovery reaches)",
              file=sys.stderr)
        return 1
    failed = False
    for node in nodes.nodes:
        for operation, kwargs in ops:
            entry = nodes.operate(node, operation, **kwargs)
            if "error" in entry:
                failed = True
                print(json.dumps(entry) if as_json else summary(entry), flush=True)
                break
        else:
            print(json.dumps(entry) if as_json else summary(entry), flush=True)
    return 1 if failed else 0


def serve_page(nodes: AdminNodes, args: argparse.Namespace) -> int:
    from dispy_core.admin.web import AdminWeb  # the web server only when a page is served

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        web = AdminWeb(nodes, host=args.http_host, port=args.http_port, token=args.token, certfile=args.certfile,
                       keyfile=args.keyfile, poll_sec=args.poll_sec)
        web.start()
    except (OSError, ValueError) as exc:
        print(f"dispyadmin: error: {exc}", file=sys.stderr)
        return 1
    print(f"dispyadmin ready: {web.url} ({len(nodes.nodes)} nodes)", flush=True)
    try:
        while not stop.wait(60.0 if not nodes.discover else max(args.poll_sec, 30.0)):
            nodes.ping()
    finally:
        web.shutdown()
    log.info("dispyadmin stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    node_list, secret = check_args(args, parser)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    hosts = args.host or [h.strip() for h in os.environ.get("DISPY_HOST", "").split(",") if h.strip()]
    try:
        config = load_config("client", certfile=args.node_certfile, keyfile=args.node_keyfile,
                             cafile=args.node_cafile, msg_timeout=args.msg_timeout)
        discovery_secret = args.secret if args.secret is not None else os.environ.get("DISPY_SECRET", "")
        nodes = AdminNodes(config, secret, node_list, discover=not node_list, secret=discovery_secret,
                           node_port=args.dispy_port + 1, hosts=hosts)
        nodes.start()
    except (DispyError, ValueError, OSError) as exc:
        print(f"dispyadmin: error: {exc}", file=sys.stderr)
        return 2
    try:
        ops = operations(args)
        if ops:
            nodes.wait_for_discovery()
            return run_operations(nodes, ops, args.json)
        return serve_page(nodes, args)
    finally:
        nodes.close()


if __name__ == "__main__":
    sys.exit(main())
