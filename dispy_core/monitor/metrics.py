"""The monitor's ``/metrics``: what it shows, in the Prometheus text exposition format (version 0.0.4).

Metrics (labels ``cluster`` = the cluster's name, ``cid`` = its number on this monitor, ``node`` = ``addr:port``):

- ``dispy_jobs_submitted_total`` counter, ``dispy_jobs_ended_total{status}`` counter (Finished, Cancelled,
  Terminated, Abandoned), ``dispy_jobs{state}`` gauge (pending = the queue, running);
- per node: ``dispy_node_cpus``, ``dispy_node_cpus_busy`` gauges, ``dispy_node_jobs_done_total``,
  ``dispy_node_sent_bytes_total``, ``dispy_node_received_bytes_total`` counters, ``dispy_node_usable`` (0/1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDED = ("Finished", "Cancelled", "Terminated", "Abandoned")
_NODE_METRICS = (
    ("dispy_node_cpus", "gauge", "CPUs of the node the cluster uses", "cpus"),
    ("dispy_node_cpus_busy", "gauge", "CPUs of the node running the cluster's jobs now", "busy"),
    ("dispy_node_jobs_done_total", "counter", "Jobs of the cluster the node finished", "jobs_done"),
    ("dispy_node_sent_bytes_total", "counter", "Bytes the cluster sent to the node", "tx"),
    ("dispy_node_received_bytes_total", "counter", "Bytes the cluster received from the node", "rx"),
)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def render(clusters: Iterable[tuple[int, str, dict[str, Any], list[dict[str, Any]]]]) -> str:
    """``clusters``: ``(cid, name, counts, nodes)`` as the watches give them; the exposition text."""
    rows = list(clusters)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("dispy_jobs_submitted_total", "counter", "Jobs submitted to the cluster since the monitor watches it")
    for cid, name, counts, _ in rows:
        lines.append(f"dispy_jobs_submitted_total{_labels(cid=cid, cluster=name)} {counts['submitted']}")
    family("dispy_jobs_ended_total", "counter", "Jobs that reached a final status, by status")
    for cid, name, counts, _ in rows:
        for status in ENDED:
            lines.append(f"dispy_jobs_ended_total{_labels(cid=cid, cluster=name, status=status)} "
                         f"{counts['ended'].get(status, 0)}")
    family("dispy_jobs", "gauge", "Jobs not yet ended: pending (the cluster's queue) and running")
    for cid, name, counts, _ in rows:
        for state in ("pending", "running"):
            lines.append(f"dispy_jobs{_labels(cid=cid, cluster=name, state=state)} {counts[state]}")
    for metric, kind, help_text, field in _NODE_METRICS:
        family(metric, kind, help_text)
        for cid, name, _, nodes in rows:
            for node in nodes:
                lines.append(f"{metric}{_labels(cid=cid, cluster=name, node=node['key'])} {node[field]}")
    family("dispy_node_usable", "gauge", "1 while the cluster uses the node, 0 once it is closed")
    for cid, name, _, nodes in rows:
        for node in nodes:
            lines.append(f"dispy_node_usable{_labels(cid=cid, cluster=name, node=node['key'])} "
                         f"{1 if node['status'] == 'usable' else 0}")
    return "\n".join(lines) + "\n"
