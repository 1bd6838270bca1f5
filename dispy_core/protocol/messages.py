"""Every message of the wire protocol: frozen dataclasses with pinned type codes.

A message's fields are of the safe types ``int``, ``float``, ``bool``, ``str``, ``bytes``,
``list[str]``, ``list[int]`` and ``dict[str, Any]`` (JSON values only). ``bytes`` fields carry opaque
payloads (serialized user objects, file data); they travel as raw blobs, never inside JSON, and the
core never loads them. The type codes are part of the protocol: never renumber, only add.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

PROTOCOL_VERSION = 1

MESSAGE_TYPES: dict[int, type[Message]] = {}
_M = TypeVar("_M", bound="type[Message]")


def message(code: int) -> typing.Callable[[_M], _M]:
    """Register a message class under a pinned type code."""

    def register(cls: _M) -> _M:
        if code in MESSAGE_TYPES:
            used = MESSAGE_TYPES[code].__name__
            raise RuntimeError(f"message code {code} used twice: {used}, {cls.__name__}")
        cls.CODE = code
        MESSAGE_TYPES[code] = cls
        return cls

    return register


@dataclass(frozen=True, slots=True)
class Message:
    CODE: ClassVar[int] = 0


def field_kinds(cls: type[Message]) -> list[tuple[str, type]]:
    """(name, type) of each field, with annotations resolved (cached per class)."""
    cached = _FIELD_KINDS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
        _FIELD_KINDS[cls] = cached
    return cached


_FIELD_KINDS: dict[type, list[tuple[str, type]]] = {}


# --------------------------------------------------------------------------- handshake (1-9)
@message(1)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Connecting side opens: its nonce and the protocol versions it speaks."""

    nonce: bytes
    role: str = "client"
    name: str = ""
    versions: list[int] = field(default_factory=lambda: [PROTOCOL_VERSION])
    software: str = ""
    features: list[str] = field(default_factory=list)
    """Optional parts of the protocol this side speaks (``"batch"``); an older peer ignores the key."""


@message(2)
@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """Accepting side answers: its nonce and its proof of the secret over both nonces."""

    nonce: bytes
    proof: bytes
    version: int = PROTOCOL_VERSION
    name: str = ""
    software: str = ""
    features: list[str] = field(default_factory=list)
    """The features of the Hello's list this side speaks too: what both may use from now on."""


@message(3)
@dataclass(frozen=True, slots=True)
class Auth(Message):
    """Connecting side proves the secret over both nonces."""

    proof: bytes


@message(4)
@dataclass(frozen=True, slots=True)
class AuthOk(Message):
    """Accepting side confirms; the first frame under the session keys."""

    name: str = ""


@message(5)
@dataclass(frozen=True, slots=True)
class Error(Message):
    """A refusal or failure the peer should see (``req_id`` 0 when not an answer)."""

    code: str
    message: str
    req_id: int = 0


@message(6)
@dataclass(frozen=True, slots=True)
class Ping(Message):
    req_id: int = 0


@message(7)
@dataclass(frozen=True, slots=True)
class Pong(Message):
    req_id: int = 0


@message(8)
@dataclass(frozen=True, slots=True)
class Fragment(Message):
    """A piece of the body of a large message (``msg_type``), sent in order under the session's MACs, so
    that no frame is larger than ``FRAGMENT_SIZE`` and a receiver never buffers more than one frame plus
    the one message being reassembled (at most ``max_payload``). ``total`` is the whole body's size."""

    msg_type: int
    total: int
    data: bytes
    last: bool = False


@message(9)
@dataclass(frozen=True, slots=True)
class Batch(Message):
    """Several small messages in one frame, for a peer that offered ``"batch"``: one header, one MAC and
    one parse for all of them (a tiny job's messages cost more in framing than in their bodies).
    ``bodies`` is their bodies one after another; ``codes`` and ``sizes`` say what each is."""

    codes: list[int]
    sizes: list[int]
    bodies: bytes


# --------------------------------------------------------------------------- node info (10-19)
@message(10)
@dataclass(frozen=True, slots=True)
class NodeInfoRequest(Message):
    req_id: int = 0


@message(11)
@dataclass(frozen=True, slots=True)
class NodeInfo(Message):
    """What a node tells a client about itself."""

    req_id: int
    name: str
    ip_addr: str
    cpus: int
    avail_cpus: int
    platform: str = ""
    python: str = ""
    executor: str = ""
    serializers: list[str] = field(default_factory=list)
    avail_info: dict[str, Any] = field(default_factory=dict)


@message(12)
@dataclass(frozen=True, slots=True)
class Pulse(Message):
    """A node's periodic sign of life with its availability."""

    busy: int = 0
    avail_cpus: int = 0
    avail_info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- computations (20-29)
@message(20)
@dataclass(frozen=True, slots=True)
class ComputationOpen(Message):
    """Client asks a node to host a computation; files follow as FileChunk, then ComputationSetup."""

    req_id: int
    comp_id: str
    name: str
    kind: str
    code: bytes = b""
    source: str = ""
    code_name: str = ""
    program: str = ""
    py_version: list[int] = field(default_factory=list)
    depends_code: bytes = b""
    setup: bytes = b""
    cleanup: bytes = b""
    cleanup_files: bool = True
    setup_args: bytes = b""
    cpus: int = 0
    dest_path: str = ""
    setup_timeout: float = 600.0
    options: dict[str, Any] = field(default_factory=dict)


@message(24)
@dataclass(frozen=True, slots=True)
class ComputationSetup(Message):
    """Client says all files are sent: the node starts the computation's host and runs setup."""

    req_id: int
    comp_id: str


@message(21)
@dataclass(frozen=True, slots=True)
class ComputationReady(Message):
    """Node's answer to ComputationOpen (directory made) and ComputationSetup (``cpus`` usable), or
    ``ok`` False with ``error``."""

    req_id: int
    comp_id: str
    ok: bool
    cpus: int = 0
    error: str = ""
    dest_path: str = ""


@message(22)
@dataclass(frozen=True, slots=True)
class ComputationClose(Message):
    req_id: int
    comp_id: str
    terminate: bool = False


@message(23)
@dataclass(frozen=True, slots=True)
class ComputationClosed(Message):
    req_id: int
    comp_id: str
    error: str = ""


@message(25)
@dataclass(frozen=True, slots=True)
class NodeCpusRequest(Message):
    """A ``SharedJobCluster``'s ``set_node_cpus``: how many CPUs of one of its nodes the dispyscheduler uses, for
    every computation (``node``: its address, name or ``addr:port``; ``cpus`` as ``set_node_cpus`` takes them).
    Only a scheduler started with ``--cooperative`` agrees."""

    req_id: int
    comp_id: str
    node: str
    cpus: int


@message(26)
@dataclass(frozen=True, slots=True)
class NodeCpusSet(Message):
    """The answer: the CPUs of ``node`` used now, or ``cpus`` -1 and ``error`` saying why not."""

    req_id: int
    cpus: int
    node: str = ""
    error: str = ""


# --------------------------------------------------------------------------- jobs (30-39)
@message(30)
@dataclass(frozen=True, slots=True)
class JobSubmit(Message):
    comp_id: str
    job_uid: int
    args: bytes
    files: list[str] = field(default_factory=list)


@message(31)
@dataclass(frozen=True, slots=True)
class JobStarted(Message):
    comp_id: str
    job_uid: int
    start_time: float
    ip_addr: str = ""
    """From a scheduler: the node the job started on (a node leaves it empty: it is the node)."""


@message(32)
@dataclass(frozen=True, slots=True)
class JobResult(Message):
    comp_id: str
    job_uid: int
    status: int
    result: bytes = b""
    stdout: bytes = b""
    stderr: bytes = b""
    exception: str = ""
    start_time: float = 0.0
    end_time: float = 0.0
    exception_object: str = ""
    """The exception the job raised, serialized by the computation's serializer, in base64 (empty if it could
    not be): a JSON field, not a blob, so that older peers, which ignore JSON keys they do not know, still
    decode the message. A client loads it (as it loads ``result``) for ``job.future`` to raise."""


@message(33)
@dataclass(frozen=True, slots=True)
class JobProvisional(Message):
    comp_id: str
    job_uid: int
    result: bytes


@message(34)
@dataclass(frozen=True, slots=True)
class JobCancel(Message):
    comp_id: str
    job_uid: int


@message(35)
@dataclass(frozen=True, slots=True)
class JobRefused(Message):
    """The node cannot run this job now (no free CPU, unknown computation...): the client re-queues it.

    ``code`` is a :class:`dispy_core.status.RefusalReason` value; ``reason`` the text for people."""

    comp_id: str
    job_uid: int
    reason: str
    code: str = ""


@message(36)
@dataclass(frozen=True, slots=True)
class ResultsAck(Message):
    """The client has these results for good (recorded in its recover file): the node forgets them.

    Until then the node keeps each result it sent, so that one in flight when the client dies is
    still there for ``recover_jobs``."""

    comp_id: str
    job_uids: list[int]


@message(37)
@dataclass(frozen=True, slots=True)
class JobsRecover(Message):
    """``recover_jobs``: take over a computation whose client vanished and get its jobs' results.

    The node answers ``JobsRecovered``, then sends a ``JobResult`` for each job it kept the result of,
    and one for each job still running when it ends."""

    req_id: int
    comp_id: str
    job_uids: list[int]


@message(38)
@dataclass(frozen=True, slots=True)
class JobsRecovered(Message):
    req_id: int
    comp_id: str
    found: bool
    """False: the node has no such computation (closed, or never there); every job is unknown."""
    kept: list[int] = field(default_factory=list)
    """Jobs whose results follow now."""
    running: list[int] = field(default_factory=list)
    """Jobs running or waiting there: their results follow when they end."""
    unknown: list[int] = field(default_factory=list)
    """Jobs the node knows nothing of (never arrived, or their results were dropped: see ``error``)."""
    error: str = ""


@message(39)
@dataclass(frozen=True, slots=True)
class JobLost(Message):
    """The job was running when its computation's host process died (OOM killer, a job killing its parent):
    it did not end by itself, so the client treats it as lost with a node (``reentrant``, ``allowed_failures``)."""

    comp_id: str
    job_uid: int
    reason: str


# --------------------------------------------------------------------------- files (40-49)
@message(40)
@dataclass(frozen=True, slots=True)
class FileChunk(Message):
    """A piece of a file sent to a node, into the computation's directory (``job_uid`` > 0: per job)."""

    req_id: int
    comp_id: str
    relpath: str
    size: int
    offset: int
    data: bytes
    last: bool = True
    job_uid: int = 0
    mode: int = 0o644


@message(41)
@dataclass(frozen=True, slots=True)
class FileAck(Message):
    req_id: int
    ok: bool
    error: str = ""


@message(42)
@dataclass(frozen=True, slots=True)
class JobFile(Message):
    """A file a job sends to the client with ``dispy_send_file``."""

    comp_id: str
    job_uid: int
    relpath: str
    data: bytes


# --------------------------------------------------------------------------- admin (50-59)
# dispyadmin's operations. They travel only on a connection whose Hello announced the role "admin" and
# that proved the node's --admin_secret (never its client secret): see dispy_core/node/admin.py. No field
# is a blob, so nothing in them is ever loaded by a serializer.
@message(50)
@dataclass(frozen=True, slots=True)
class AdminInfoRequest(Message):
    """What the node is doing; answered with AdminInfo."""

    req_id: int = 0


@message(51)
@dataclass(frozen=True, slots=True)
class AdminInfo(Message):
    """The answer to every admin operation: the node as it is after the operation."""

    req_id: int
    name: str
    ip_addr: str
    port: int
    cpus: int
    """CPUs served now."""
    max_cpus: int
    """CPUs of the machine (``cpus`` may be set from 1 to this)."""
    busy: int
    jobs_done: int
    accepting: bool
    not_accepting: str = ""
    """Why no new job is accepted (service window, operator, shutting down); empty when accepting."""
    service_start: str = ""
    """The daily service window as HH:MM (empty: not set)."""
    service_stop: str = ""
    service_end: str = ""
    service_state: str = ""
    serve: int = 0
    """Computations the node serves before it quits (0: no limit); ``served`` so far."""
    served: int = 0
    clients: list[str] = field(default_factory=list)
    """One line per computation: its name and its client's address."""
    software: str = ""


@message(52)
@dataclass(frozen=True, slots=True)
class AdminSetCpus(Message):
    """Serve ``cpus`` CPUs (0 = all, negative = all but that many), as dispynode's ``--cpus``."""

    req_id: int
    cpus: int


@message(53)
@dataclass(frozen=True, slots=True)
class AdminSetService(Message):
    """Set the daily service window (HH:MM each, as ``--service_start/--service_stop/--service_end``; empty:
    not set; all three empty: always in service)."""

    req_id: int
    start: str = ""
    stop: str = ""
    end: str = ""


@message(54)
@dataclass(frozen=True, slots=True)
class AdminServe(Message):
    """Serve ``computations`` more computations from now, then quit (0: no limit), as ``--serve``."""

    req_id: int
    computations: int


@message(55)
@dataclass(frozen=True, slots=True)
class AdminShutdown(Message):
    """Stop the node: after its running jobs (``wait``), as the console's ``quit``; else now, as ``exit``."""

    req_id: int
    wait: bool = True
