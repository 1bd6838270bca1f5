"""SharedJobCluster: a JobCluster whose one node is a ``dispyscheduler``, shared with other client programs.

The scheduler looks like one big node: the client speaks to it the protocol it speaks to a node, and it
answers with the CPUs its nodes give this computation. Everything of JobCluster works as before; what only
makes sense with the nodes themselves (``submit_node``) sees the scheduler as the one node. The scheduler
decides which node runs each job; ``nodes=`` picks among its nodes, and ``set_node_cpus`` asks it (only a
scheduler started with ``--cooperative`` agrees) to use fewer or more CPUs of one of them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from dispy_core.client.allocation import parse_nodes
from dispy_core.client.cluster import DEFAULT_DISPY_PORT, JobCluster
from dispy_core.client.computation import FileDepend
from dispy_core.client.connections import READY, NodeConn
from dispy_core.client.files import send_file_depend
from dispy_core.client.nodes import DispyNode, NodeAllocate
from dispy_core.errors import DispyError
from dispy_core.protocol import messages as m

log = logging.getLogger("dispy")

__all__ = ["SCHEDULER_PIPELINE", "SCHEDULER_PORT_OFFSET", "SharedJobCluster", "wire_nodes"]

SCHEDULER_PORT_OFFSET = 2
"""The scheduler's client-facing port is its base port + 2 (9702 by default), as in the original."""

SCHEDULER_PIPELINE = 1 << 12
"""Jobs per scheduler CPU the client keeps at the scheduler: in effect every job goes there at once, as in the
original. The scheduler's policy can only choose between jobs it has; with a node's pipeline (two per CPU) the
client would hold the rest back, and the earliest-submitted job of a computation would reach the scheduler
after other computations' later ones."""


class SharedJobCluster(JobCluster):
    """Runs ``computation`` through the ``dispyscheduler`` at ``scheduler_node`` (default: this host).

    ``port`` (or ``dispy_port``) is the scheduler's base port, as its ``-p``: it is reached at that + 2;
    ``scheduler_port`` names the client-facing port itself. ``secret`` is the scheduler's
    ``--cluster_secret``; ``certfile``/``keyfile``/``cafile`` are for TLS with the scheduler. With
    ``exclusive=True`` the computation waits until those set up before it close, then has the nodes to itself.
    ``nodes`` picks among the scheduler's nodes (JobCluster's forms and rules; ``NodeAllocate.cpus`` caps the
    CPUs used on each); a node it does not name is not used for this computation. See :func:`wire_nodes`.
    """

    def __init__(self, computation: Any, nodes: Any = None, depends: list[Any] | None = None,
                 job_status: Any = None, cluster_status: Any = None, host: Any = None, client_port: int = 0,
                 dispy_port: int | None = None, scheduler_node: str | None = None, ext_host: Any = None,
                 loglevel: int | None = None, setup: Any = None, cleanup: Any = True, dest_path: str | None = None,
                 reentrant: bool = False, poll_interval: float | None = None, exclusive: bool = False,
                 secret: str = "", keyfile: str | None = None, certfile: str | None = None,
                 recover_file: str | None = None, **extra: Any) -> None:
        alias = extra.pop("scheduler_host", None)
        if scheduler_node is not None and alias is not None and alias != scheduler_node:
            raise ValueError(f"scheduler_node {scheduler_node!r} and scheduler_host {alias!r} disagree")
        scheduler = scheduler_node or alias or _local_host()
        base = extra.pop("port", None) or dispy_port or DEFAULT_DISPY_PORT
        scheduler_port = extra.pop("scheduler_port", None) or base + SCHEDULER_PORT_OFFSET
        if extra.pop("pulse_interval", None) is not None:
            log.info("SharedJobCluster: pulse_interval is the scheduler's (dispyscheduler --pulse_interval); ignored")
        if not isinstance(exclusive, bool):
            raise ValueError(f"exclusive must be True or False, not {exclusive!r}")
        self.exclusive = exclusive
        self.scheduler_node = scheduler
        self._wanted_nodes = wire_nodes(nodes)
        super().__init__(computation, nodes=[NodeAllocate(scheduler, port=scheduler_port)], depends=depends,
                         job_status=job_status, cluster_status=cluster_status, host=host, ext_host=ext_host,
                         dispy_port=dispy_port, loglevel=loglevel, setup=setup, cleanup=cleanup, dest_path=dest_path,
                         reentrant=reentrant, secret=secret, keyfile=keyfile, certfile=certfile,
                         recover_file=recover_file, poll_interval=poll_interval, **extra)

    async def _discover_initial(self) -> None:
        # Before the scheduler is set up (on the loop, ahead of its NodeReady): its capacity comes from this.
        self._driver.state.pipeline = SCHEDULER_PIPELINE
        self._driver.state.starts_reported = True  # a job queued at the scheduler is Created, not Running
        await super()._discover_initial()

    def send_file(self, path: Any, node: Any = None) -> int:
        """Send a file into the computation's directory on every node the scheduler runs it on, and on any
        node that joins later (the scheduler keeps it until the computation closes): 0 once every node has it,
        -1 (with each node's reason logged) otherwise. ``node`` is taken for the original's signature: the
        scheduler, not the program, decides where jobs run, so the file goes to all of them. Right after the
        cluster is created this waits (up to ``msg_timeout``) for the scheduler to be set up."""
        try:
            dep = send_file_depend(path)
        except (ValueError, OSError) as exc:
            log.error("send_file(%r): %s", path, exc)
            return -1
        timeout = 7 * self.config.msg_timeout + dep.size / (1 << 20)
        return self._run(self._send_file_through_scheduler(dep), timeout, default=-1)

    async def _send_file_through_scheduler(self, dep: FileDepend) -> int:
        deadline = time.monotonic() + self.config.msg_timeout
        while (conn := self._scheduler_conn()) is None and time.monotonic() < deadline and not self._closed:
            await asyncio.sleep(0.05)
        if conn is None:
            log.error("send_file(%r): not connected to dispyscheduler %s", dep.path, self.scheduler_node)
            return -1
        return await self._life.send_file_to(conn.node.key, dep)

    def _scheduler_conn(self) -> NodeConn | None:
        return next((c for c in self._life.nodes.values() if c.state == READY and c.channel is not None), None)

    def set_node_cpus(self, node: Any, cpus: int) -> int:
        """How many CPUs of ``node`` (one of the scheduler's nodes: its address, name or ``addr:port``; a
        DispyNode or NodeAllocate of it) the scheduler uses, for every computation, not only this one: 0 all,
        negative all but that many. Only a scheduler started with ``--cooperative`` agrees; otherwise, or for a
        node it does not have, -1 and the log says why. The scheduler itself is no node of its own."""
        if isinstance(node, DispyNode | NodeAllocate):
            spec = f"{node.ip_addr}:{node.port}" if node.port else node.ip_addr
        else:
            spec = node
        if not isinstance(spec, str) or not spec or not isinstance(cpus, int) or isinstance(cpus, bool):
            log.warning("set_node_cpus(%r, %r): give a node's address, name or addr:port and a number", node, cpus)
            return -1
        return self._run(self._ask_node_cpus(spec, cpus), 2 * self.config.msg_timeout, default=-1)

    async def _ask_node_cpus(self, spec: str, cpus: int) -> int:
        conn = self._scheduler_conn()
        if conn is None or conn.channel is None:
            log.warning("set_node_cpus(%r, %d): not connected to dispyscheduler %s", spec, cpus, self.scheduler_node)
            return -1
        channel = conn.channel
        try:
            reply = await channel.request(m.NodeCpusRequest(channel.next_req_id(), self.comp_id, spec, cpus),
                                          self.config.msg_timeout)
        except (DispyError, OSError) as exc:
            log.warning("set_node_cpus(%r, %d): dispyscheduler did not answer: %s", spec, cpus, exc)
            return -1
        if not isinstance(reply, m.NodeCpusSet) or reply.cpus < 0:
            why = reply.error if isinstance(reply, m.NodeCpusSet) else f"unexpected answer {reply!r}"
            log.warning("set_node_cpus(%r, %d): dispyscheduler refused: %s", spec, cpus, why)
            return -1
        log.info("set_node_cpus: dispyscheduler uses %d CPUs of %s now", reply.cpus, reply.node)
        return reply.cpus

    def _computation_options(self) -> dict[str, Any]:
        """What the scheduler needs to treat jobs as this program would: on a lost node, resubmit or not."""
        options = super()._computation_options()
        options["reentrant"] = bool(self.reentrant)
        options["allowed_failures"] = self.allowed_failures
        if self.exclusive:
            options["exclusive"] = True
        if self._wanted_nodes is not None:
            options["nodes"] = self._wanted_nodes
        return options


def wire_nodes(nodes: Any) -> list[dict[str, Any]] | None:
    """``nodes=`` as the scheduler takes it: ``{host, port, cpus}`` per entry (None: all the scheduler's nodes).

    The scheduler never runs the client's code nor loads its objects, so an ``allocate`` override, ``depends``
    and ``setup_args`` of a node stay here: they are ignored, and the log says so."""
    if nodes is None or nodes == "*" or nodes == ["*"]:
        return None
    wire = []
    for entry in parse_nodes(nodes, 0):
        alloc = entry.alloc
        dropped = [what for what, there in (("its allocate()", type(alloc) is not NodeAllocate),
                                            ("depends", bool(alloc.depends)), ("setup_args", bool(alloc.setup_args)))
                   if there]
        if dropped:
            log.warning("SharedJobCluster nodes=: the scheduler applies only the host, port and cpus of %r; %s "
                        "ignored", alloc, ", ".join(dropped))
        wire.append({"host": alloc.host, "port": alloc.port or None, "cpus": int(alloc.cpus)})
    return wire


def _local_host() -> str:
    """This host, as the original's default ``scheduler_node`` (loopback if the name does not resolve)."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return "127.0.0.1"
    return name
