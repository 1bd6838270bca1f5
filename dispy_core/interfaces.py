"""The typing.Protocols that factory hooks return.

The core drives these objects on the hot path directly (no pluggy call per frame or per job):
a hook picks the driver once, the driver does the work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dispy_core.computation import Computation


# --------------------------------------------------------------------------- transport
@runtime_checkable
class ByteStream(Protocol):
    """One established, ordered, reliable byte stream (a TCP or TLS connection)."""

    @property
    def peer(self) -> tuple[str, int]: ...

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Up to ``max_bytes`` bytes; ``b''`` at end of stream."""
        ...

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` and wait until the transport's buffer has drained enough."""
        ...

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` at once, without waiting for the buffer to drain, in order with :meth:`write`.

        Raises ``TransportError`` (or ``OSError``) when the stream is closed. The channel writes the parts
        of one frame with it back to back, so that no other frame comes between them, and sends replies
        and results with it (no task per message).
        """
        ...

    async def close(self) -> None: ...


class Listener(Protocol):
    """A listening endpoint; ``address`` is the actual (host, port) bound (port 0 resolved)."""

    @property
    def address(self) -> tuple[str, int]: ...

    async def close(self) -> None: ...


StreamHandler = Callable[[ByteStream], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """Moves bytes; framing, authentication and integrity are the core's job, not the transport's."""

    scheme: str

    async def connect(self, host: str, port: int, *, timeout: float) -> ByteStream: ...

    async def listen(self, host: str, port: int, handler: StreamHandler) -> Listener: ...


# --------------------------------------------------------------------------- serializer
@runtime_checkable
class Serializer(Protocol):
    """Turns user objects (arguments, results, code) into bytes and back.

    ``loads`` may execute code (pickle): the core calls it only on payloads from an authenticated peer.
    """

    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes | memoryview) -> Any: ...

    def dumps_code(self, obj: Any) -> bytes:
        """Serialize a function, class, instance or module *by value* (so ``__main__`` code travels)."""
        ...


# --------------------------------------------------------------------------- discovery
@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a node listens: a resolved IP address and the node port."""

    ip_addr: str
    port: int
    host: str = ""


@runtime_checkable
class Discovery(Protocol):
    """Finds nodes: resolves explicit hosts; a plugin that can also find nodes by pattern (broadcast,
    multicast) has ``search(...)`` and, for the node's side, ``respond(...)`` (see the ``udp`` plugin)."""

    async def resolve(self, host: str, port: int) -> list[NodeAddress]:
        """Addresses for an explicit host name or IP; raises ConfigError for patterns it cannot serve."""
        ...


# --------------------------------------------------------------------------- executor
@dataclass(slots=True)
class ComputationSpec:
    """Everything a node-side executor needs to host one computation: the client's record of it
    (:class:`~dispy_core.computation.Computation`, as it arrived) and what the node adds.

    ``work_dir`` is the computation's directory, ``serializer`` the name of the serializer its blobs
    are in, ``setup_timeout`` how long setup may run (seconds; 0 or less: no bound). ``extra`` holds
    what the node decided for it (``jobs_per_process`` bounded by the node's maximum, ``init_file``,
    ``max_file_size``) and ``job_limits`` as the client asked them (:mod:`dispy_core.joblimits`: the
    executor checks them and bounds them by its own ceilings); executors may read further keys of their own.
    """

    computation: Computation
    work_dir: Path
    serializer: str
    node_name: str = ""
    node_ip_addr: str = ""
    setup_timeout: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JobOutcome:
    """What a finished job reports; ``result`` stays serialized (the node never loads user data)."""

    status: int
    result: bytes = b""
    stdout: bytes = b""
    stderr: bytes = b""
    exception: str = ""
    start_time: float = 0.0
    end_time: float = 0.0
    lost: bool = False
    """The job's process went down with the computation's host: it did not end by itself (``exception`` says
    why). The client then treats the job as lost with a node, not as failed."""
    exception_object: bytes = b""
    """The exception the job raised, serialized (b"" if it could not be): ``job.future`` raises it."""


class ExecutorEvents(Protocol):
    """Callbacks an executor makes into the node driver (called on the node's event loop)."""

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None: ...

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None: ...

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None: ...

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None: ...

    def node_shutdown(self, comp_id: str) -> None:
        """The computation's setup, cleanup or one of its jobs called ``dispynode_shutdown()``; the node
        decides whether to obey (``--client_shutdown``)."""
        ...


@runtime_checkable
class JobExecutor(Protocol):
    """Runs jobs in child processes; the node process never runs user code."""

    name: str

    async def open(self, spec: ComputationSpec, events: ExecutorEvents) -> None:
        """Start hosting a computation and run its setup; raises SetupError (with the reason)."""
        ...

    async def submit(self, comp_id: str, job_uid: int, args: bytes) -> None:
        """Start one job (its own process); completion arrives through ``events.job_done``."""
        ...

    def submit_nowait(self, comp_id: str, job_uid: int, args: bytes) -> None:
        """:meth:`submit` without a coroutine: start the job (or queue what starts it) and return at once,
        raising what ``submit`` raises (``ExecutionError``: computation unknown, broken or closing, a job
        already running under that uid, arguments above the executor's bound). The node's hot path calls
        it, saving a task per job; an executor that has to wait may schedule a task of its own here.
        """
        ...

    async def cancel(self, comp_id: str, job_uid: int, grace: float = 5.0) -> bool:
        """Interrupt a running job, kill it (and its children) after ``grace`` s; False if unknown."""
        ...

    async def close(self, comp_id: str, *, terminate: bool = False) -> None:
        """Stop hosting a computation (running cleanup); ``terminate`` kills running jobs first."""
        ...

    async def shutdown(self) -> None:
        """Close every computation and leave no process behind."""
        ...


# --------------------------------------------------------------------------- scheduler
@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A snapshot of one node as the scheduler sees it.

    ``cpus`` is the number of CPUs the node runs this computation's jobs on; ``capacity`` the jobs the
    cluster keeps in flight there (more than ``cpus`` when jobs are pipelined: one waits on the node
    while another runs); ``busy`` the jobs in flight now. ``avg_job_time`` is the mean observed run
    time of this computation's jobs on the node (0.0 until one has finished).
    """

    node_id: str
    cpus: int
    busy: int
    jobs_done: int = 0
    avg_job_time: float = 0.0
    capacity: int = 0

    @property
    def free(self) -> int:
        """Jobs the node can take now (``capacity`` defaults to ``cpus``)."""
        return max(0, (self.capacity or self.cpus) - self.busy)


@dataclass(frozen=True, slots=True)
class NodeView:
    """A snapshot of a node found by a cluster, for decision hooks (``dispy_allocate``)."""

    ip_addr: str
    port: int
    name: str
    cpus: int
    platform: str = ""
    avail_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobView:
    """A snapshot of one job for schedulers and decision hooks (``dispy_recover``)."""

    uid: int
    status: int
    node_id: str | None = None
    pinned: str | None = None
    submit_time: float = 0.0
    attempts: int = 0
    """Times the job was sent to a node (a resubmitted job has been sent more than once)."""
    losses: int = 0
    """Times a node was lost while running the job (counting the loss being decided on)."""


@runtime_checkable
class Scheduler(Protocol):
    """Decides which node runs which job; told what happens, like pytest-xdist's schedulers.

    The cluster state calls ``node_added`` / ``node_removed`` as nodes come and go, ``job_done`` as
    results arrive (with the observed run time), and ``assign`` whenever jobs wait and some node has
    room. ``assign`` returns ``(job uid, node_id)`` pairs; the state refuses pairs that name an unknown
    job or node, or a node without room, so a faulty scheduler cannot overfill a node. Jobs not
    assigned stay pending for the next call.
    """

    name: str

    def node_added(self, node: NodeLoad) -> None: ...

    def node_removed(self, node_id: str) -> None: ...

    def job_done(self, node_id: str, run_time: float) -> None: ...

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]: ...


# --------------------------------------------------------------------------- policy (dispyscheduler)
@dataclass(frozen=True, slots=True)
class ClusterView:
    """A snapshot of one computation of ``dispyscheduler`` that has a job waiting, for the policy to choose from.

    ``order`` is its arrival number (clusters are admitted first come, first served; lower came earlier).
    ``next_submit`` is the submit time of its next waiting job. ``served`` is the arbiter's serve number of
    the last CPU slot this computation was given (0: never yet); within one decision it grows with each slot
    handed out, so "least recently served" is exact. ``in_flight`` counts its jobs at nodes (all nodes) plus
    the slots given in this decision; ``pending`` its jobs still waiting here.
    """

    comp_id: str
    name: str
    order: int
    created: float
    pending: int
    next_submit: float
    in_flight: int = 0
    served: int = 0
    jobs_done: int = 0
    exclusive: bool = False


@runtime_checkable
class Policy(Protocol):
    """Decides which computation's waiting job goes next when a node has a free CPU slot (``dispyscheduler``).

    ``choose`` gets the computations that have a job waiting and room at ``node_id`` (never empty) and
    returns the ``comp_id`` of the one to serve, or None to leave the slot free. It should be a pure
    function of its arguments: the arbiter calls it once per slot, updating the views between calls.
    """

    name: str

    def choose(self, clusters: Sequence[ClusterView], node_id: str) -> str | None: ...
