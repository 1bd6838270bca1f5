"""``dispynetrelay``: the command. Run it on a machine of a network whose nodes clients of other networks
cannot reach by broadcast; clients name that machine in ``nodes`` beside a wildcard for the network
(``nodes=['10.2.0.*', '10.2.0.5']``). What it does: ``relay.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys

from dispy_core.cliparse import CommandParser, add_log_options, add_version
from dispy_core.logsetup import configure_program
from dispy_core.relay.console import Console
from dispy_core.relay.relay import NetRelay, RelayOptions, relay_interfaces
from dispy_plugins.discovery_udp.datagram import discovery_key

__all__ = ["build_parser", "main", "options_from_args"]

DEFAULT_DISPY_PORT = 9700

log = logging.getLogger("dispy.relay")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="dispynetrelay",
        description="Pass dispy clients' discovery pings from other networks on to the nodes of this one, and "
                    "the nodes' answers and announcements back. Clients name this machine in 'nodes', beside a "
                    "wildcard for this network.")
    parser.add_argument("-i", "--host", "--ip_addr", dest="host", action="append", default=[],
                        help="address of this machine to serve at and whose network to ping (repeatable; "
                             "default: every address of every interface that is up)")
    parser.add_argument("--scheduler_node", action="append", default=[], metavar="HOST[:PORT]",
                        help="tell this client or scheduler about this network's nodes, without waiting for its "
                             "ping (repeatable; PORT defaults to --scheduler_port)")
    parser.add_argument("-p", "--dispy_port", type=int, default=DEFAULT_DISPY_PORT,
                        help=f"base port (default {DEFAULT_DISPY_PORT}): nodes listen on this + 1, clients on this")
    parser.add_argument("--relay_port", type=int, default=0,
                        help="UDP port to hear clients' pings on (default: the nodes' port, dispy_port + 1, "
                             "which clients ping)")
    parser.add_argument("--scheduler_port", type=int, default=0,
                        help="the clients' UDP port (default: dispy_port): nodes' announcements are heard there, "
                             "and --scheduler_node hosts are told there")
    parser.add_argument("-s", "--secret", default=None,
                        help="the secret of the clients and nodes (default: $DISPY_SECRET or none); datagrams "
                             "without it are ignored")
    parser.add_argument("--certfile", default=None,
                        help="accepted for compatibility; not used: the relay speaks only UDP, which TLS does "
                             "not cover (its datagrams are authenticated with the secret instead)")
    parser.add_argument("--keyfile", default=None, help="accepted for compatibility, as --certfile")
    parser.add_argument("--ipv4_udp_multicast", action="store_true",
                        help="ping this network, and hear announcements, on the IPv4 multicast group instead of "
                             "by broadcast (as the nodes do)")
    parser.add_argument("--daemon", action="store_true", help="no interactive console")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    add_log_options(parser)
    add_version(parser)
    return parser


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RelayOptions:
    """Checked options; a mistake exits with status 2 and says what is wrong (``parser.error``)."""
    if not 1 <= args.dispy_port <= 65534:
        parser.error(f"--dispy_port must be between 1 and 65534, not {args.dispy_port}")
    for option in ("relay_port", "scheduler_port"):
        if not 0 <= getattr(args, option) <= 65535:
            parser.error(f"--{option} must be between 1 and 65535 (0: the default), not {getattr(args, option)}")
    for option in ("certfile", "keyfile"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} is not a readable file")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    scheduler_port = args.scheduler_port or args.dispy_port
    hosts = [_address(h, "--host", parser) for h in args.host]
    try:
        relay_interfaces(hosts)
    except ValueError as exc:
        parser.error(f"--host: {exc}")
    scheduler_nodes = []
    for spec in args.scheduler_node:
        host, port = _host_port(spec, scheduler_port, parser)
        scheduler_nodes.append((_address(host, "--scheduler_node", parser), port))
    secret = args.secret if args.secret is not None else os.environ.get("DISPY_SECRET", "")
    return RelayOptions(key=discovery_key(secret), node_port=args.dispy_port + 1,
                        relay_port=args.relay_port or args.dispy_port + 1, scheduler_port=scheduler_port,
                        hosts=hosts, scheduler_nodes=scheduler_nodes, ipv4_multicast=args.ipv4_udp_multicast)


def _host_port(spec: str, default: int, parser: argparse.ArgumentParser) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    spec = spec.strip()
    if spec.startswith("[") and "]:" in spec:
        host, _, port = spec[1:].partition("]:")
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    else:
        host, port = spec.strip("[]"), ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        parser.error(f"--scheduler_node {spec!r}: port {port!r} is not a number between 1 and 65535")
    return host, int(port) if port else default


def _address(host: str, option: str, parser: argparse.ArgumentParser) -> str:
    """An IP literal as given; a name resolved now (a datagram's send must not wait for a resolver)."""
    host = host.strip().strip("[]")
    if not host:
        parser.error(f"{option}: empty host")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        parser.error(f"{option} {host!r} is neither an IP address nor a name that resolves: {exc}")
    return str(infos[0][4][0])


async def serve(relay: NetRelay, interactive: bool) -> None:
    """Run the relay until SIGTERM/SIGINT/SIGHUP (or the console's ``quit``)."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await relay.start()
    except BaseException:
        relay.close()  # the sockets bound before the failure
        raise
    task = asyncio.ensure_future(relay.serve())
    print(f"dispynetrelay ready: UDP {', '.join(relay.listeners)} port {relay.options.relay_port}", flush=True)
    if interactive:
        Console(relay.status_lines, stopped.set).attach(loop)
    waiter = asyncio.ensure_future(stopped.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    summary = relay.status_lines()[0]
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    log.info("stopped: %s", summary)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = options_from_args(args, parser)
    configure_program(debug=args.debug, json_logs=args.log_json)
    if args.certfile:
        log.info("--certfile is not used: dispynetrelay speaks only UDP, authenticated with the secret")
    try:
        asyncio.run(serve(NetRelay(options), interactive=not args.daemon))
    except OSError as exc:
        print(f"dispynetrelay: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
