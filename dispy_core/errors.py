"""The exception tree of dispy.

::

    DispyError
    ├── ConfigError              bad site config, unknown plugin name, bad option value
    │   └── PluginNotFound       a selected plugin is not installed (message lists installed names)
    ├── ProtocolError            a frame or message that does not follow the wire protocol
    │   ├── FrameTooLarge        a declared size above the bound, refused before allocation
    │   ├── IntegrityError       a frame MAC that does not verify, a replayed or reordered frame
    │   ├── AuthenticationError  the peer could not prove the shared secret
    │   └── IPCError             a malformed or oversized frame from a computation's host or job process
    ├── RemoteError              the peer answered a request with an Error message (its code and text)
    ├── TransportError           connecting, listening or TLS failed
    │   └── MemoryConnectionRefused  nothing listens there (testing kit's in-process network)
    ├── SerializationError       an object that cannot be serialized / a payload that cannot be loaded
    ├── ExecutionError           a computation could not be set up or run on a node
    │   ├── SetupError           setup failed, returned an unknown code or timed out
    │   └── ComputationBroken    the computation's host on a node is gone: no job of it can run there
    ├── UnsafePathError          a path from a peer that would escape its directory
    └── InvalidTransition        an event a state machine cannot take in its state (a bug or a late message)
"""

from __future__ import annotations


class DispyError(Exception):
    """Base of every error raised by dispy itself."""


class ConfigError(DispyError, ValueError):
    """Configuration (site config, environment, options) is invalid."""


class PluginNotFound(ConfigError):
    """A plugin name was selected that is not installed."""

    def __init__(self, role: str, name: str, installed: list[str]) -> None:
        self.role = role
        self.name = name
        self.installed = sorted(installed)
        names = ", ".join(self.installed) or "(none)"
        super().__init__(f"no {role} plugin named {name!r} is installed; installed {role} plugins: {names}")


class ProtocolError(DispyError):
    """Bytes from a peer that do not form a valid frame or message."""


class FrameTooLarge(ProtocolError):
    """A frame declares a size above the configured bound."""


class IntegrityError(ProtocolError):
    """A frame whose MAC or sequence number does not verify."""


class PayloadTooLarge(ProtocolError):
    """A message above ``max_payload``: refused before it is sent (or, from a peer, before it is buffered)."""


class PeerClosedError(ProtocolError):
    """The peer ended the connection and said why (its last, unauthenticated, Error frame); ``code`` is that
    frame's code ("released": the node's operator freed it from its clients, who should not come back)."""

    def __init__(self, message: str, code: str = "closing") -> None:
        super().__init__(message)
        self.code = code


class AuthenticationError(ProtocolError):
    """The peer failed the challenge-response over the shared secret."""


class IPCError(ProtocolError):
    """A frame from a host or job process that is malformed or too large (executor_host's IPC)."""


class RemoteError(DispyError):
    """The peer answered a request with an Error message."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class TransportError(DispyError, OSError):
    """A connection could not be made, kept or secured."""


class MemoryConnectionRefused(TransportError, ConnectionRefusedError):
    """Nothing listens at the address (a ``TransportError`` as the core expects, and an OS-style refusal)."""


class SerializationError(DispyError):
    """An object could not be serialized, or a payload could not be loaded."""


class ExecutionError(DispyError):
    """A computation could not be set up or run on a node."""


class SetupError(ExecutionError):
    """The computation's setup failed, returned an unknown value or took too long."""


class ComputationBroken(ExecutionError):
    """The computation's host process on a node died (OOM killer, a job killing it): none of its jobs can
    start there until it is set up again."""


class UnsafePathError(DispyError, ValueError):
    """A path received from a peer would escape the directory it belongs to."""


class InvalidTransition(DispyError):
    """An event that cannot happen to a job (or node) in its current state."""
