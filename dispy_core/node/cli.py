"""``dispynode``: the command that serves this machine's CPUs to dispy clients."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from dispy_core.config import load_config
from dispy_core.errors import DispyError
from dispy_core.malloc_tuning import tune_malloc
from dispy_core.node.server import NodeOptions, NodeServer, resolve_cpus
from dispy_core.sizes import parse_size

DEFAULT_DISPY_PORT = 9700


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispynode", description="Run dispy jobs on this machine.")
    parser.add_argument("-c", "--cpus", type=int, default=0,
                        help="CPUs to serve: 0 = all, negative = all but that many")
    parser.add_argument("-i", "--host", action="append", default=[], help="address to bind (repeatable)")
    parser.add_argument("-p", "--dispy_port", type=int, default=DEFAULT_DISPY_PORT,
                        help="base port; the node listens on this + 1 (default 9700 -> 9701)")
    parser.add_argument("--name", default="", help="node name (default: host name)")
    parser.add_argument("--dest_path_prefix", default="", help="where computations' files live")
    parser.add_argument("-s", "--secret", default=None,
                        help="shared secret clients must prove (default: $DISPY_SECRET or none)")
    parser.add_argument("--certfile", default=None, help="TLS certificate (PEM)")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM), if not in certfile")
    parser.add_argument("--cafile", default=None, help="CA certificates to verify peers (default: certfile)")
    parser.add_argument("--max_file_size", default="0", help="largest file accepted (k/m/g suffixes; 0 = none)")
    parser.add_argument("--clean", action="store_true", help="remove what a previous node left behind")
    parser.add_argument("--daemon", action="store_true", help="no interactive console")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    parser.add_argument("--msg_timeout", type=float, default=10.0, help="socket timeout in seconds")
    parser.add_argument("--executor", default=None, help="executor plugin(s), comma separated (e.g. spawn)")
    return parser


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
    for option in ("certfile", "keyfile", "cafile"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} is not a readable file")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if len(args.host) > 1:
        parser.error("binding several --host addresses is not supported yet; give one")
    secret = args.secret if args.secret is not None else os.environ.get("DISPY_SECRET", "")
    return NodeOptions(host=args.host[0] if args.host else "", port=args.dispy_port + 1 if args.dispy_port else 0,
                       cpus=args.cpus, name=args.name, dest_path_prefix=args.dest_path_prefix, secret=secret,
                       max_file_size=max_file_size, msg_timeout=args.msg_timeout, clean=args.clean)


async def run_node(server: NodeServer) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, server.request_stop)
    try:
        await server.start()
        print(f"dispynode ready: {server.name} with {server.cpus} CPUs", flush=True)
        await server.serve_forever()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # also exported to the host and job processes through the environment
    parser = build_parser()
    args = parser.parse_args(argv)
    options = options_from_args(args, parser)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
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
        asyncio.run(run_node(server))
    except OSError as exc:
        print(f"dispynode: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
