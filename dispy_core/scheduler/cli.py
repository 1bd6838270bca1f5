"""``dispyscheduler``: one scheduler, many client programs (``SharedJobCluster``), one set of nodes."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from dispy_core.cliparse import CommandParser, add_log_options, add_version
from dispy_core.config import load_config
from dispy_core.errors import DispyError
from dispy_core.logsetup import configure_program
from dispy_core.node import nodeconfig
from dispy_core.node.cli import quiet_accept_errors
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol.session import MAX_PAYLOAD
from dispy_core.scheduler.backend import NodeSide
from dispy_core.scheduler.front import FrontOptions, SchedulerServer, clean_prefix, default_prefix
from dispy_core.sizes import parse_size

DEFAULT_PORT = 9700
ZOMBIE_INTERVAL = 60.0

log = logging.getLogger("dispy.scheduler")

SECRET_OPTIONS = frozenset({"node_secret", "cluster_secret"})
"""Never written by ``--save_config`` (see ``node/nodeconfig.py``: no harmless form of a secret exists)."""
SAVED_NOTE = ("written by dispyscheduler --save_config; node_secret and cluster_secret are not saved: give them "
              "with --node_secret/--cluster_secret or $DISPY_NODE_SECRET/$DISPY_CLUSTER_SECRET")

NOT_IMPLEMENTED: tuple[str, ...] = ()
"""Options accepted so that old command lines still start; each logs that it has no effect yet."""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="dispyscheduler",
                           description="Share dispy nodes between client programs (SharedJobCluster).")
    add_version(parser)
    parser.add_argument("-n", "--node", action="append", default=[], metavar="HOST[:PORT]",
                        help="a node to use (repeatable; default: every node discovery finds)")
    parser.add_argument("-i", "--host", action="append", default=[],
                        help="address to bind for clients (repeatable; default: every address)")
    parser.add_argument("--ext_host", action="append", default=[],
                        help="accepted, not needed: nodes and clients never connect back to the scheduler (see README)")
    parser.add_argument("-p", "--port", "--dispy_port", dest="port", type=int, default=DEFAULT_PORT,
                        help="base port: clients connect to this + 2, nodes listen on this + 1, nodes' "
                             "announcements are heard on this (default 9700)")
    parser.add_argument("--ipv4_udp_multicast", action="store_true",
                        help="discover nodes on the IPv4 multicast group instead of by broadcast")
    parser.add_argument("--name", default="", help="the scheduler's name (default: host name)")
    parser.add_argument("--node_secret", default=None,
                        help="secret the nodes' --secret is (default: $DISPY_NODE_SECRET, else none)")
    parser.add_argument("--node_certfile", default=None, help="TLS certificate towards the nodes (PEM)")
    parser.add_argument("--node_keyfile", default=None, help="TLS key towards the nodes, if not in the certificate")
    parser.add_argument("--cluster_secret", default=None,
                        help="secret client programs must prove (SharedJobCluster(secret=); default: "
                             "$DISPY_CLUSTER_SECRET, else none)")
    parser.add_argument("--cluster_certfile", default=None, help="TLS certificate towards the clients (PEM)")
    parser.add_argument("--cluster_keyfile", default=None,
                        help="TLS key towards the clients, if not in the certificate")
    parser.add_argument("--cafile", default=None, help="CA certificates to verify peers (default: each certfile)")
    parser.add_argument("--pulse_interval", type=float, default=None,
                        help="nodes send a pulse every SEC s; a node silent for 5 pulses is lost")
    parser.add_argument("--ping_interval", type=float, default=None, metavar="SEC",
                        help="ping for nodes every SEC s while a computation is open (with discovery: no -n)")
    parser.add_argument("--zombie_interval", type=float, default=ZOMBIE_INTERVAL,
                        help="minutes a client may stay silent (answering no ping) before its computations are "
                             f"closed (default {ZOMBIE_INTERVAL:g}; 0 = never)")
    parser.add_argument("--msg_timeout", type=float, default=10.0, help="seconds to wait for a peer's answer")
    parser.add_argument("--dest_path_prefix", default="",
                        help="where clients' files are kept until their computation closes")
    parser.add_argument("--max_file_size", default="0", help="largest file a client may send (k/m/g; 0 = none)")
    parser.add_argument("--clean", action="store_true", help="remove what a previous scheduler left behind")
    parser.add_argument("--httpd", action="store_true",
                        help="serve the web monitor of every computation (dispy_core/monitor) at --httpd_host "
                             "(default loopback; elsewhere open the URL with a token printed on stderr, or set "
                             "$DISPY_HTTPD_TOKEN) and --httpd_port (default 8181)")
    parser.add_argument("--httpd_host", default="", help="address the --httpd monitor listens on (default 127.0.0.1)")
    parser.add_argument("--httpd_port", type=int, default=8181, help="port of the --httpd monitor (default 8181)")
    parser.add_argument("--cooperative", action="store_true",
                        help="clients may change how many CPUs of a node the scheduler uses, for every computation "
                             "(SharedJobCluster.set_node_cpus)")
    parser.add_argument("--cleanup_nodes", action="store_true",
                        help="nodes delete every computation's files, even if its client asked cleanup=False")
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="which computation's job goes next when computations share CPUs: a dispy.policy plugin "
                             "(loadbalance: earliest-submitted job first, the default; fair_cluster; early_cluster; "
                             "default: the site config's [plugins] policy, else $DISPY_POLICY, else loadbalance)")
    parser.add_argument("--fair_cluster_scheduler", action="store_true",
                        help="the computation least recently served goes next (= --policy fair_cluster)")
    parser.add_argument("--early_cluster_scheduler", action="store_true",
                        help="the earliest-created computation goes next (= --policy early_cluster)")
    parser.add_argument("--daemon", action="store_true", help="no interactive console (there is none yet)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="read options from this TOML (or JSON) file of option names and values "
                             "(the command line overrides them)")
    parser.add_argument("--save_config", default=None, metavar="FILE",
                        help="write the options to this file (TOML if it ends in .toml, else JSON; without "
                             "secrets) and exit")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    add_log_options(parser)
    return parser


def parse_node(spec: str, parser: argparse.ArgumentParser) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
    host, port = spec, None
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    if not host:
        parser.error(f"--node {spec!r} names no host")
    if port is None:
        return host, None
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--node {spec!r}: the port must be a number in 1..65535")
    return host, int(port)


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not 0 <= args.port <= 65533:
        parser.error(f"--port must be between 0 and 65533 (clients connect to it + 2), not {args.port}")
    if args.msg_timeout <= 0:
        parser.error(f"--msg_timeout must be positive, not {args.msg_timeout}")
    if args.zombie_interval < 0:
        parser.error(f"--zombie_interval must be >= 0 minutes (0 = never), not {args.zombie_interval}")
    if args.ping_interval is not None and not 1 <= args.ping_interval <= 3600:
        parser.error(f"--ping_interval must be between 1 and 3600 seconds, not {args.ping_interval}")
    if args.pulse_interval is not None and not 1 <= args.pulse_interval <= 600:
        parser.error(f"--pulse_interval must be between 1 and 600 seconds, not {args.pulse_interval}")
    for side in ("node", "cluster"):
        certfile, keyfile = getattr(args, f"{side}_certfile"), getattr(args, f"{side}_keyfile")
        if keyfile and not certfile:
            parser.error(f"--{side}_keyfile needs --{side}_certfile")
    for option in ("node_certfile", "node_keyfile", "cluster_certfile", "cluster_keyfile", "cafile"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} is not a readable file")
    for host in args.host:
        try:
            ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except (OSError, UnicodeError) as exc:
                parser.error(f"--host {host!r} is neither an IP address nor a name that resolves: {exc}")
    try:
        parse_size(args.max_file_size)
    except ValueError as exc:
        parser.error(str(exc))
    args.policy = chosen_policy(args, parser)


def chosen_policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """``--policy`` or the original's flags (which must not disagree); None: the site config decides."""
    named = [name for flag, name in (("fair_cluster_scheduler", "fair_cluster"),
                                     ("early_cluster_scheduler", "early_cluster")) if getattr(args, flag)]
    if args.policy is not None and not args.policy.strip():
        parser.error("--policy needs a policy name")
    wanted = set(named) | ({args.policy.strip()} if args.policy else set())
    if len(wanted) > 1:
        parser.error(f"choose one policy, not {' and '.join(sorted(wanted))}")
    return wanted.pop() if wanted else None


def build_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SchedulerServer:
    """The server, with one plugin manager (and transport) per side: their certificates differ."""
    from dispy import config as public  # the original's multicast groups

    node_config = load_config("scheduler", certfile=args.node_certfile, keyfile=args.node_keyfile,
                              cafile=args.cafile, msg_timeout=args.msg_timeout, policy=args.policy)
    client_config = node_config.replace(certfile=args.cluster_certfile, keyfile=args.cluster_keyfile)
    node_plugins = DispyPluginManager(node_config)
    client_plugins = DispyPluginManager(client_config)
    max_payload = node_config.get("transport.max_payload", MAX_PAYLOAD)
    if type(max_payload) is not int or max_payload < 1 << 20:
        raise DispyError(f"transport.max_payload must be a number of bytes of at least 1 MiB, not {max_payload!r}")
    base = args.port
    side = NodeSide(
        config=node_config, plugins=node_plugins, transport=node_plugins.make_transport("tcp"),
        serializer=node_plugins.make_serializer(), secret=_secret(args.node_secret, "DISPY_NODE_SECRET"),
        node_port=base + 1, client_port=base, nodes=[parse_node(n, parser) for n in args.node],
        hosts=list(args.host), ipv4_udp_multicast=args.ipv4_udp_multicast,
        multicast_groups={"ipv4_group": public.IPv4MulticastGroup, "ipv6_group": public.IPv6MulticastGroup},
        pulse_interval=args.pulse_interval, max_payload=max_payload, cleanup_nodes=args.cleanup_nodes,
        ping_interval=args.ping_interval)
    prefix = Path(args.dest_path_prefix).resolve() if args.dest_path_prefix else default_prefix()
    front = FrontOptions(hosts=list(args.host), port=base + 2 if base else 0,
                         secret=_secret(args.cluster_secret, "DISPY_CLUSTER_SECRET"),
                         name=args.name or socket.gethostname(), dest_path_prefix=prefix,
                         msg_timeout=args.msg_timeout, zombie_interval=args.zombie_interval,
                         max_file_size=parse_size(args.max_file_size), max_payload=max_payload,
                         tls=bool(args.cluster_certfile), cooperative=args.cooperative)
    return SchedulerServer(front, client_plugins.make_transport("tcp"), client_plugins.make_serializer(), side)


def _secret(given: str | None, env: str) -> str:
    return given if given is not None else os.environ.get(env, "")


def log_compatibility(args: argparse.Namespace) -> None:
    for name in NOT_IMPLEMENTED:
        if getattr(args, name) not in (None, False, []):
            log.warning("--%s is accepted but not implemented yet; ignored", name)
    if args.ext_host:
        log.info("--ext_host %s: not needed here; the scheduler opens every connection to its nodes (which answer "
                 "pings where they came from) and clients connect to it: behind NAT, forward port %d and name the "
                 "gateway in SharedJobCluster(scheduler_node=)", ",".join(args.ext_host), args.port + 2)
    if args.ping_interval and args.node:
        log.info("--ping_interval: the nodes are named (-n), so there is no discovery to repeat; a lost named node "
                 "is contacted again by itself")


async def run_scheduler(server: SchedulerServer, clean: bool = False, httpd: dict[str, Any] | None = None) -> None:
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, server.request_stop)
    if clean:
        clean_prefix(server.options.dest_path_prefix)
    monitor: asyncio.Future[None] | None = None
    try:
        host, port = await server.start()
        print(f"dispyscheduler ready: {server.options.name} at port {port}", flush=True)
        if httpd is not None:  # --httpd: the web monitor, until the scheduler stops
            from dispy_core.monitor.scheduler import serve_monitor

            monitor = asyncio.ensure_future(serve_monitor(server, **httpd))
        await server.serve_forever()
    finally:
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        await server.stop()


def _command_line_policy_wins(args: argparse.Namespace, argv: list[str] | None) -> None:
    """A policy chosen on the command line (by name or by flag) replaces the file's, whichever way it chose."""
    given = build_parser().parse_args(argv)
    if given.policy is not None or given.fair_cluster_scheduler or given.early_cluster_scheduler:
        args.policy = given.policy
        args.fair_cluster_scheduler = given.fair_cluster_scheduler
        args.early_cluster_scheduler = given.early_cluster_scheduler


def save_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--save_config FILE``: the options (checked first, as if starting), secrets left out; then exit."""
    saved = nodeconfig.saved_options(args, parser, secrets=SECRET_OPTIONS, note=SAVED_NOTE)
    saved.update(fair_cluster_scheduler=False, early_cluster_scheduler=False)  # the choice is saved once, as policy
    try:
        nodeconfig.save_options(args.save_config, saved)
    except OSError as exc:
        print(f"dispyscheduler: error: cannot write {args.save_config!r}: {exc}", file=sys.stderr)
        return 1
    print(f"dispyscheduler: options saved to {args.save_config} (secrets are not saved)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = nodeconfig.parse_with_config(parser, argv)
    if args.config:
        _command_line_policy_wins(args, argv)
    check_args(args, parser)
    if args.save_config:
        return save_config(args, parser)
    configure_program(debug=args.debug, json_logs=args.log_json)
    log_compatibility(args)
    try:
        server = build_server(args, parser)
    except (DispyError, ValueError) as exc:
        print(f"dispyscheduler: error: {exc}", file=sys.stderr)
        return 2
    try:
        httpd = {"host": args.httpd_host, "port": args.httpd_port} if args.httpd else None
        asyncio.run(run_scheduler(server, clean=args.clean, httpd=httpd))
    except OSError as exc:
        print(f"dispyscheduler: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
