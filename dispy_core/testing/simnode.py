"""Simulated dispynodes: many in one process, each a real TCP listener on loopback that speaks the real protocol.

They exist to measure the client alone. A simulated node authenticates like a real one (same secret, same
handshake, same MAC'd frames) and answers every message a client sends, but it runs no job process: it
answers each ``JobSubmit`` at once with a ``JobResult``, so the time and CPU a benchmark sees are the
client's own. Hundreds of them fit in one process (one asyncio loop, one listening port each), where as
many real ``dispynode`` processes would not fit on a small machine.

What each message gets (the answers a real node gives, minus the executor)::

    NodeInfoRequest   -> NodeInfo (executor "simulated")
    ComputationOpen   -> ComputationReady (no directory is made)
    FileChunk         -> FileAck for the last chunk of a file (the data is dropped)
    ComputationSetup  -> ComputationReady with the CPUs granted, once the function is loaded ("apply")
    JobSubmit         -> JobResult, Finished, with the answer (see below); JobRefused if not set up
                         (preceded by JobStarted for a computation that asks: a dispyscheduler's)
    Ping              -> Pong;  ComputationClose -> ComputationClosed;  JobsRecover -> JobsRecovered (none)
    JobCancel, ResultsAck, Pong: nothing (jobs end at once, so there is nothing to cancel or keep)

The answer is, with ``answer="apply"``, the computation's function applied to the job's arguments in this
process (so a test can check every result), or with ``answer="none"``, ``None`` serialized once for every job
(the least work here). Arguments are loaded only after the client proved the secret. Results of one read
leave in one write. A computation opened with a ``pulse_interval`` gets a ``Pulse`` that often.

Run them in their own process so that their CPU is not counted as the client's::

    sim = start_simulated_nodes(256, secret="s")       # python -m dispy_core.testing.simnode ...
    nodes = [dispy.NodeAllocate(sim.host, port=p) for p in sim.ports]
    ...
    sim.stop()

or in a loop of the caller's with :class:`SimulatedNodes` (``await start()`` / ``await stop()``).
Only loopback addresses may be served: these nodes run functions of whoever knows the secret.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispy_core import __version__
from dispy_core.channel import Channel
from dispy_core.config import Config
from dispy_core.errors import DispyError, ProtocolError
from dispy_core.interfaces import ByteStream, Listener, Serializer
from dispy_core.jobargs import job_depends
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.protocol import messages as m
from dispy_core.status import JobStatus, RefusalReason

__all__ = ["ANSWERS", "SimulatedNodes", "SimNodeProcess", "main", "start_simulated_nodes"]

ANSWERS = ("apply", "none")
READY_LINE = "simnode ready"
"""What the process prints, followed by ``host port,port,...``, once every node listens."""
HANDSHAKE_TIMEOUT = 10.0
STATS_LINE = "simnode stats "
"""What the process prints as it stops, followed by its :class:`SimStats` as JSON."""
SECRET_ENV = "DISPY_SIMNODE_SECRET"
"""How the process gets its secret (not on the command line, where ps shows it)."""


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address; ValueError otherwise (simulated nodes run whatever they are sent)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"simulated nodes listen only on a loopback address (127.0.0.0/8 or ::1), not {host!r}")
    return host


@dataclass
class _Computation:
    """What a simulated node keeps of a computation: its client and, once set up, what to answer."""

    comp_id: str
    kind: str
    code: bytes
    cpus: int
    announce: bool = False
    """A dispyscheduler's computation: each job's start is announced (JobStarted) before its result."""
    function: Callable[..., Any] | None = None
    ready: bool = False


@dataclass
class SimStats:
    """What the simulated nodes did, for a caller that wants to check or report it."""

    connections: int = 0
    computations: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    by_port: dict[int, int] = field(default_factory=dict)
    """Jobs answered by each node (its port)."""


class _Node:
    """One simulated node: its listener and the computations of its clients."""

    def __init__(self, group: SimulatedNodes, index: int) -> None:
        self.group = group
        self.name = f"{group.name_prefix}-{index}"
        self.port = 0
        self.listener: Listener | None = None
        self.comps: dict[str, _Computation] = {}

    async def serve(self, stream: ByteStream) -> None:
        group = self.group
        try:
            channel = await Channel.accept(stream, secret=group.secret,
                                           serializers={group.serializer.name: group.serializer},
                                           serializer=group.serializer.name, timeout=HANDSHAKE_TIMEOUT,
                                           name=self.name, software=f"neodispy {__version__} (simulated node)")
        except (ProtocolError, DispyError, OSError):
            return  # a peer without the secret: dropped, as a real node does
        group.stats.connections += 1
        group.channels.add(channel)
        try:
            await channel.run(lambda msg: self.handle(channel, msg))
        finally:
            group.channels.discard(channel)
            for comp_id in [c for c in self.comps if group.owner.get((self.port, c)) is channel]:
                del self.comps[comp_id]  # its client is gone: so is the computation (nothing is kept)
                del group.owner[(self.port, comp_id)]

    # ------------------------------------------------------------------ messages
    def handle(self, channel: Channel, msg: m.Message) -> None:
        """Answer ``msg``; the answers of one read are held and leave in one write (see ``_flush_soon``)."""
        handler = _HANDLERS.get(type(msg))
        self.group.hold(channel)
        if handler is None:
            channel.send_nowait(m.Error("unexpected", f"simulated node does not accept {type(msg).__name__}",
                                        getattr(msg, "req_id", 0)))
            return
        handler(self, channel, msg)

    def _info(self, channel: Channel, msg: m.NodeInfoRequest) -> None:
        cpus = self.group.cpus
        channel.send_nowait(m.NodeInfo(req_id=msg.req_id, name=self.name, ip_addr=self.group.host, cpus=cpus,
                                       avail_cpus=cpus, platform=platform.platform(),
                                       python=".".join(map(str, sys.version_info[:3])), executor="simulated",
                                       serializers=[self.group.serializer.name]))

    def _open(self, channel: Channel, msg: m.ComputationOpen) -> None:
        if msg.comp_id in self.comps:
            channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False,
                                                   error=f"computation {msg.comp_id} is already open on this node"))
            return
        cpus = min(msg.cpus, self.group.cpus) if msg.cpus > 0 else self.group.cpus
        self.comps[msg.comp_id] = _Computation(msg.comp_id, msg.kind, bytes(msg.code), cpus,
                                               announce=msg.options.get("announce_starts") is True)
        self.group.owner[(self.port, msg.comp_id)] = channel
        self.group.stats.computations += 1
        interval = msg.options.get("pulse_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.group.pulse(channel, max(0.1, float(interval)))
        channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, True, cpus=cpus,
                                               dest_path=f"simulated/{msg.comp_id}"))

    def _file(self, channel: Channel, msg: m.FileChunk) -> None:
        if self._owned(channel, msg.comp_id) is None:
            channel.send_nowait(m.FileAck(msg.req_id, False, f"no computation {msg.comp_id!r} of yours here"))
        elif msg.last:
            channel.send_nowait(m.FileAck(msg.req_id, True))

    def _setup(self, channel: Channel, msg: m.ComputationSetup) -> None:
        comp = self._owned(channel, msg.comp_id)
        if comp is None:
            channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False,
                                                   error=f"no computation {msg.comp_id!r} of yours here"))
            return
        if self.group.answer == "apply" and comp.kind == "function":
            try:
                comp.function = channel.session.loads(comp.code)  # the client proved the secret
            except Exception as exc:  # noqa: BLE001 - told to the client, which fails the node
                channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, False,
                                                       error=f"simulated node cannot load the function: {exc}"))
                return
        comp.ready = True
        channel.send_nowait(m.ComputationReady(msg.req_id, msg.comp_id, True, cpus=comp.cpus))

    def _submit(self, channel: Channel, msg: m.JobSubmit) -> None:
        comp = self._owned(channel, msg.comp_id)
        if comp is None or not comp.ready:
            channel.send_nowait(m.JobRefused(msg.comp_id, msg.job_uid, "computation is not ready here",
                                             RefusalReason.NOT_READY.value))
            return
        start = time.time()
        if comp.announce:
            channel.send_nowait(m.JobStarted(msg.comp_id, msg.job_uid, start))
        status, result, exception = self._answer(channel, comp, msg.args)
        stats = self.group.stats
        stats.jobs += 1
        stats.by_port[self.port] = stats.by_port.get(self.port, 0) + 1
        if status != JobStatus.Finished:
            stats.failed_jobs += 1
        channel.send_nowait(m.JobResult(msg.comp_id, msg.job_uid, int(status), result, exception=exception,
                                        start_time=start, end_time=time.time()))

    def _answer(self, channel: Channel, comp: _Computation, args: bytes) -> tuple[JobStatus, bytes, str]:
        if comp.function is None:
            return JobStatus.Finished, self.group.none_result, ""
        try:
            loaded = channel.session.loads(args)
            if job_depends(loaded) is not None:
                raise DispyError("a simulated node does not install a job's own dispy_job_depends")
            call_args, call_kwargs = loaded
            return JobStatus.Finished, self.group.serializer.dumps(comp.function(*call_args, **call_kwargs)), ""
        except Exception as exc:  # noqa: BLE001 - the job's failure, reported as a node reports it
            return JobStatus.Terminated, self.group.none_result, f"{type(exc).__name__}: {exc}\n"

    def _close(self, channel: Channel, msg: m.ComputationClose) -> None:
        if self._owned(channel, msg.comp_id) is not None:
            del self.comps[msg.comp_id]
            self.group.owner.pop((self.port, msg.comp_id), None)
        channel.send_nowait(m.ComputationClosed(msg.req_id, msg.comp_id))

    def _recover(self, channel: Channel, msg: m.JobsRecover) -> None:
        channel.send_nowait(m.JobsRecovered(msg.req_id, msg.comp_id, False, unknown=list(msg.job_uids),
                                            error="a simulated node keeps no results"))

    def _ping(self, channel: Channel, msg: m.Ping) -> None:
        channel.send_nowait(m.Pong(msg.req_id))

    def _ignore(self, channel: Channel, msg: m.Message) -> None:
        """Jobs end as they arrive: nothing to cancel, no result kept to forget, a Pong was the point."""

    def _owned(self, channel: Channel, comp_id: str) -> _Computation | None:
        comp = self.comps.get(comp_id)
        if comp is None or self.group.owner.get((self.port, comp_id)) is not channel:
            return None
        return comp


_HANDLERS: dict[type[m.Message], Callable[[_Node, Channel, Any], None]] = {
    m.NodeInfoRequest: _Node._info,
    m.ComputationOpen: _Node._open,
    m.FileChunk: _Node._file,
    m.ComputationSetup: _Node._setup,
    m.JobSubmit: _Node._submit,
    m.ComputationClose: _Node._close,
    m.JobsRecover: _Node._recover,
    m.Ping: _Node._ping,
    m.Pong: _Node._ignore,
    m.JobCancel: _Node._ignore,
    m.ResultsAck: _Node._ignore,
}


class SimulatedNodes:
    """``count`` simulated nodes of ``cpus`` CPUs each, on ``host``, in the running event loop."""

    def __init__(self, count: int, *, cpus: int = 1, secret: str = "", host: str = "127.0.0.1",
                 answer: str = "apply", name_prefix: str = "simnode") -> None:
        if count < 1:
            raise ValueError(f"count of simulated nodes must be at least 1, not {count}")
        if cpus < 1:
            raise ValueError(f"cpus of a simulated node must be at least 1, not {cpus}")
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, not {answer!r}")
        self.host = check_loopback(host)
        self.cpus = cpus
        self.secret = secret
        self.answer = answer
        self.name_prefix = name_prefix
        plugins = DispyPluginManager(Config(role="node"))
        self.transport = plugins.make_transport("tcp")
        self.serializer: Serializer = plugins.make_serializer()
        self.none_result = bytes(self.serializer.dumps(None))
        self.nodes = [_Node(self, i) for i in range(count)]
        self.channels: set[Channel] = set()
        self.owner: dict[tuple[int, str], Channel] = {}
        self.stats = SimStats()
        self._held: set[Channel] = set()
        self._pulsing: dict[Channel, asyncio.Task[None]] = {}

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    async def start(self) -> list[int]:
        """Listen with every node, each on a free port; the ports, in node order."""
        for node in self.nodes:
            node.listener = await self.transport.listen(self.host, 0, node.serve)
            node.port = node.listener.address[1]
        return self.ports

    def pulse(self, channel: Channel, interval: float) -> None:
        """Send ``channel`` a Pulse every ``interval`` s until it closes (once per connection, as a node does)."""
        if channel not in self._pulsing:
            self._pulsing[channel] = asyncio.ensure_future(self._pulse_loop(channel, interval))

    async def _pulse_loop(self, channel: Channel, interval: float) -> None:
        try:
            while not channel.closed:
                await asyncio.sleep(interval)
                channel.send_nowait(m.Pulse(busy=0, avail_cpus=self.cpus))
        finally:
            self._pulsing.pop(channel, None)

    async def stop(self) -> None:
        for task in list(self._pulsing.values()):
            task.cancel()
        for channel in list(self.channels):
            await channel.close("simulated node stopping")
        for node in self.nodes:
            if node.listener is not None:
                await node.listener.close()

    def hold(self, channel: Channel) -> None:
        """Collect ``channel``'s answers until the loop's next turn: those to one read leave in one write."""
        if channel not in self._held:
            self._held.add(channel)
            channel.hold()
            asyncio.get_running_loop().call_soon(self._flush, channel)

    def _flush(self, channel: Channel) -> None:
        self._held.discard(channel)
        channel.flush()


# ====================================================================== in its own process
@dataclass
class SimNodeProcess:
    """A ``python -m dispy_core.testing.simnode`` child process and the ports of its nodes."""

    proc: subprocess.Popen[str]
    host: str
    ports: list[int]
    stats: dict[str, Any] = field(default_factory=dict)
    """What the nodes did (:class:`SimStats` as a dict, ``by_port`` keyed by port strings), once stopped."""

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the process (SIGTERM) and read what its nodes did into :attr:`stats`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate(timeout=5)
            for line in out.splitlines():
                if line.startswith(STATS_LINE):
                    self.stats = json.loads(line[len(STATS_LINE):])
        return self.proc.returncode


def start_simulated_nodes(count: int, *, cpus: int = 1, secret: str = "", host: str = "127.0.0.1",
                          answer: str = "apply", ready_timeout: float = 60.0) -> SimNodeProcess:
    """Start ``count`` simulated nodes in a child process and wait until they all listen."""
    check_loopback(host)
    args = [sys.executable, "-m", "dispy_core.testing.simnode", "--count", str(count), "--cpus", str(cpus),
            "--host", host, "--answer", answer]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, SECRET_ENV: secret})  # not in argv, where ps shows it
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = ""
    while time.monotonic() < deadline:  # the child prints nothing else on stdout before this line
        line = proc.stdout.readline()
        if line.startswith(READY_LINE) or not line:
            break
    if not line.startswith(READY_LINE):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"simulated nodes did not start (exit code {proc.returncode}): {line!r}")
    _, _, rest = line.partition(READY_LINE)
    ready_host, ports = rest.split()
    return SimNodeProcess(proc, ready_host, [int(p) for p in ports.split(",")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated dispynodes for measuring a client: many in one "
                                                 "process, each answering every job at once.")
    parser.add_argument("--count", type=int, default=1, help="how many nodes (each on its own port)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each node offers")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--answer", choices=ANSWERS, default="apply",
                        help="apply: run the function on the arguments here; none: answer None at once")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    try:
        group = SimulatedNodes(args.count, cpus=args.cpus, secret=secret, host=args.host, answer=args.answer)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_serve(group))


async def _serve(group: SimulatedNodes) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = await group.start()
    print(f"{READY_LINE} {group.host} {','.join(map(str, ports))}", flush=True)
    await stop.wait()
    await group.stop()
    print(f"{STATS_LINE}{json.dumps(dataclasses.asdict(group.stats))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
