"""Configuration parameters of the original dispy (``dispy.config.DispyPort = n`` before creating clusters).

``ClientPort``, ``NodePort`` and ``SharedSchedulerPort`` are expressions over ``DispyPort``, evaluated
when used (see :func:`port`), so changing ``DispyPort`` moves them all.
"""

from __future__ import annotations

DispyPort = 9700
ClientPort = "DispyPort"
NodePort = "DispyPort + 1"
SharedSchedulerPort = "DispyPort + 2"
SharedSchedulerClientPort = 0
HTTPServerPort = 8181
IPv4MulticastGroup = "239.255.97.5"
IPv6MulticastGroup = "ff05::674f:59"
MsgTimeout = 10
MaxFileSize = 0


def port(expression: str | int, dispy_port: int | None = None) -> int:
    """Evaluate a port expression such as ``"DispyPort + 1"`` (only ``DispyPort``, + and - allowed);
    ``dispy_port`` stands in for ``DispyPort`` (a cluster's ``dispy_port=``)."""
    if isinstance(expression, int):
        return expression
    base = int(DispyPort) if dispy_port is None else int(dispy_port)
    total = 0
    sign = 1
    for token in expression.replace("+", " + ").replace("-", " - ").split():
        if token == "+":
            sign = 1
        elif token == "-":
            sign = -1
        elif token == "DispyPort":
            total += sign * base
        elif token.isdigit():
            total += sign * int(token)
        else:
            raise ValueError(f"invalid port expression {expression!r}")
    return total


def node_port(dispy_port: int | None = None) -> int:
    """The port nodes listen on, read when a cluster is created (so ``DispyPort = n`` before it counts)."""
    return port(NodePort, dispy_port)
