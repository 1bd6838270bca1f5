"""Every hook of dispy: the contract between the core and its plugins.

The seven verbs the project promises map onto hooks: discover (``dispy_make_discovery``), allocate
(``dispy_allocate``), schedule (``dispy_make_scheduler``), serialize (``dispy_make_serializer``),
execute (``dispy_make_executor``), pulse (``dispy_pulse``), recover (``dispy_recover``). Factory hooks
return an object following a Protocol of :mod:`dispy_core.interfaces`; the hot path calls that object
directly, never a hook per frame or per job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from dispy_core.config import Config
    from dispy_core.interfaces import JobView, NodeView, Policy, Scheduler

PROJECT_NAME = "dispy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def dispy_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Let a plugin add hook specifications of its own (``pluginmanager.add_hookspecs``).

    :param pluginmanager: the cluster's or server's plugin manager.

    Called for every plugin, also those registered later (historic); results are ignored.

    Runs on: client | node | scheduler
    """


@hookspec(historic=True)
def dispy_addoption(options: dict[str, Any], role: str) -> None:
    """Let a plugin declare configuration keys (with defaults) it reads from the site config.

    :param options: mapping of ``"section.key"`` to default value; add entries, never remove.
    :param role: ``"client"``, ``"node"`` or ``"scheduler"``.

    Historic; results are ignored.

    Runs on: client | node | scheduler
    """


@hookspec(historic=True)
def dispy_configure(config: Any) -> None:
    """Tell plugins the final, frozen configuration before any work starts.

    :param config: the :class:`dispy_core.config.Config` of this cluster or server.

    Historic; results are ignored.

    Runs on: client | node | scheduler
    """


@hookspec(firstresult=True)
def dispy_make_transport(config: Any, scheme: str) -> Any:
    """Create the transport for a URL scheme (``"tcp"``; TLS is ``tcp`` with certificates in config).

    :param config: the Config (certfile, keyfile, msg_timeout...).
    :param scheme: the transport scheme asked for.
    :return: an object following :class:`dispy_core.interfaces.Transport`, or None if not this plugin's.

    Stops at the first non-None result.

    Runs on: client | node | scheduler
    """


@hookspec(firstresult=True)
def dispy_make_discovery(config: Any) -> Any:
    """Create the node-discovery driver (verb: discover).

    :param config: the Config.
    :return: an object following :class:`dispy_core.interfaces.Discovery`, or None.

    Stops at the first non-None result.

    Runs on: client | scheduler | node (which answers pings and announces itself)
    """


@hookspec(firstresult=True)
def dispy_make_serializer(config: Any, name: str) -> Any:
    """Create the serializer called ``name`` (verb: serialize).

    :param config: the Config (may be None in job host processes).
    :param name: the serializer name from the frame header or the config.
    :return: an object following :class:`dispy_core.interfaces.Serializer`, or None if not this name.

    Stops at the first non-None result.

    Runs on: client | node job processes | scheduler
    """


@hookspec(firstresult=True)
def dispy_make_executor(config: Any) -> Any:
    """Create the job executor of a node (verb: execute).

    :param config: the node's Config.
    :return: an object following :class:`dispy_core.interfaces.JobExecutor`, or None when this
        executor cannot run here (the next selected executor is tried).

    Stops at the first non-None result.

    Runs on: node
    """


@hookspec(firstresult=True)
def dispy_make_scheduler(config: Config) -> Scheduler | None:
    """Create the policy that assigns jobs to nodes (verb: schedule).

    The cluster state (``dispy_core.state.cluster``) tells the object when nodes are added and removed
    and when jobs finish (with their run time), and asks it to ``assign`` pending jobs to nodes with room.
    One object per cluster (``dispyscheduler``: per computation), so it may keep what it learns.

    :param config: the Config.
    :return: an object following :class:`dispy_core.interfaces.Scheduler`, or None.

    Stops at the first non-None result.

    Runs on: client | scheduler
    """


@hookspec(firstresult=True)
def dispy_make_policy(config: Config, name: str) -> Policy | None:
    """Create dispyscheduler's policy between computations: whose waiting job goes next to a free CPU.

    Selected by name (``dispyscheduler --policy``, ``[plugins] policy`` in the site config, ``DISPY_POLICY``)
    from the ``dispy.policy`` entry points; one module may serve several names and returns None for the
    others. One object per scheduler; the arbiter (``dispy_core.state.arbiter``) calls its ``choose``.

    :param config: the scheduler's Config (a policy may read its own table with ``config.get``).
    :param name: the policy name asked for.
    :return: an object following :class:`dispy_core.interfaces.Policy`, or None if not this plugin's name.

    Stops at the first non-None result.

    Runs on: scheduler
    """


@hookspec(firstresult=True)
def dispy_allocate(cluster: Any, node: NodeView, cpus: int) -> int | None:
    """Decide how many CPUs of a newly found node a cluster uses (verb: allocate); 0 refuses the node.

    :param cluster: the cluster asking (its ``name``, ``comp_id``; a handle, not for changing).
    :param node: a frozen snapshot of the node (:class:`dispy_core.interfaces.NodeView`: ip_addr, port,
        name, cpus, platform, avail_info).
    :param cpus: what the cluster's own ``NodeAllocate`` entries decided.
    :return: CPUs to use, or None to leave the decision to the next plugin (default: ``cpus``).

    Stops at the first non-None result.

    Runs on: client | scheduler
    """


@hookspec(firstresult=True)
def dispy_recover(job: JobView, failure: str) -> str | None:
    """Decide what happens to a job whose node failed (verb: recover).

    Asked by the cluster state for each job that was running on a lost node; a job that only waited
    there, never started, is always sent elsewhere without asking.

    :param job: a frozen snapshot of the job (:class:`dispy_core.interfaces.JobView`: uid, status,
        node_id, pinned, submit_time, attempts).
    :param failure: why, e.g. ``"node-lost"``, ``"process-crashed"``.
    :return: ``"resubmit"``, ``"abandon"``, or None for the next plugin (default from ``reentrant``).

    Stops at the first non-None result.

    Runs on: client | scheduler
    """


@hookspec
def dispy_pulse(node: Any) -> dict[str, Any] | None:
    """Contribute fields to the pulse a node sends its clients (verb: pulse).

    :param node: the node server (name, cpus, busy).
    :return: a JSON-able mapping merged into the pulse's ``avail_info``, or None.

    Every implementation's result is collected.

    Runs on: node
    """


@hookspec
def dispy_pulse_received(node: Any, pulse: dict[str, Any]) -> None:
    """Notification: a pulse arrived from a node.

    :param node: the client's record of the node.
    :param pulse: the pulse's fields.

    Every implementation is called; results are ignored.

    Runs on: client | scheduler
    """


@hookspec
def dispy_job_status(job: Any, previous: int | None) -> None:
    """Notification: a job changed status (for monitors, logs, metrics).

    :param job: the DispyJob.
    :param previous: its status before, or None for a new job.

    Every implementation is called; results are ignored.

    Runs on: client | scheduler
    """


@hookspec
def dispy_node_status(node: Any, previous: int | None) -> None:
    """Notification: a node changed status (Initialized, Closed, AvailInfo...).

    :param node: the DispyNode.
    :param previous: its status before, or None when new.

    Every implementation is called; results are ignored.

    Runs on: client | scheduler
    """
