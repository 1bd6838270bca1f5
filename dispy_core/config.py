"""Site configuration: TOML file + environment overrides -> one frozen Config per cluster or server.

Where the file is looked for, first found wins: ``$DISPY_CONFIG``; the user's config dir
(``$XDG_CONFIG_HOME/dispy/config.toml``, default ``~/.config/dispy/config.toml``); ``/etc/dispy/config.toml``.

Format::

    [plugins]
    transport = "tcp"
    discovery = "udp"
    scheduler = "loadbalance"
    policy = "loadbalance"          # dispyscheduler: which computation goes next (loadbalance, fair_cluster, ...)
    serializer = "pickle"
    executors = ["fork", "spawn"]   # first that can run on this platform
    extras = []                     # names in the "dispy.plugins" group to load too

    [<anything else>]               # plugin-specific tables, read with Config.get("table.key")

Environment overrides: ``DISPY_TRANSPORT``, ``DISPY_DISCOVERY``, ``DISPY_SCHEDULER``, ``DISPY_POLICY``,
``DISPY_SERIALIZER``, ``DISPY_EXECUTORS`` (comma separated), ``DISPY_EXTRAS``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dispy_core.errors import ConfigError

ROLES = ("client", "node", "scheduler", "relay", "job")
PLUGIN_KEYS = ("transport", "discovery", "scheduler", "policy", "serializer", "executors", "extras")


@dataclass(frozen=True)
class Config:
    """Everything a cluster or server is configured with; derive variants with :meth:`replace`."""

    role: str = "client"
    transport: str = "tcp"
    discovery: str = "udp"
    scheduler: str = "loadbalance"
    policy: str = "loadbalance"
    """dispyscheduler's policy between computations (group ``dispy.policy``)."""
    serializer: str = "pickle"
    executors: tuple[str, ...] = ("fork", "spawn")
    extras: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    msg_timeout: float = 10.0
    max_file_size: int = 0
    source: str = "defaults"
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"unknown role {self.role!r}; one of {', '.join(ROLES)}")
        if self.msg_timeout <= 0:
            raise ConfigError(f"msg_timeout must be positive, not {self.msg_timeout!r}")
        if self.max_file_size < 0:
            raise ConfigError(f"max_file_size must be >= 0 (0 = unlimited), not {self.max_file_size!r}")
        if not self.executors:
            raise ConfigError("executors must name at least one executor plugin")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def get(self, dotted_key: str, default: Any = None) -> Any:
        """A plugin-specific setting, e.g. ``config.get("executor.fork.gc_freeze", True)``."""
        node: Any = self.settings
        for part in dotted_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def config_file_candidates(env: Mapping[str, str]) -> list[Path]:
    if env.get("DISPY_CONFIG"):
        return [Path(env["DISPY_CONFIG"])]
    user_dir = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [user_dir / "dispy" / "config.toml", Path("/etc/dispy/config.toml")]


def _as_names(value: Any, key: str, origin: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{origin}: plugins.{key} must be a list of plugin names, not {value!r}")
    return tuple(value)


def load_config(role: str = "client", env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read the site config, apply environment overrides, then explicit ``overrides`` (keyword args)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {"role": role}
    settings: dict[str, Any] = {}
    source = "defaults"
    candidates = config_file_candidates(env)
    for path in candidates:
        if not path.is_file():
            if env.get("DISPY_CONFIG"):
                raise ConfigError(f"DISPY_CONFIG names {str(path)!r}, which is not a readable file")
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read site config {path}: {exc}") from exc
        source = str(path)
        plugins = data.pop("plugins", {})
        if not isinstance(plugins, dict):
            raise ConfigError(f"{path}: [plugins] must be a table")
        for key, value in plugins.items():
            if key not in PLUGIN_KEYS:
                raise ConfigError(f"{path}: unknown key plugins.{key}; known: {', '.join(PLUGIN_KEYS)}")
            if key in ("executors", "extras"):
                values[key] = _as_names(value, key, str(path))
            elif isinstance(value, str) and value:
                values[key] = value
            else:
                raise ConfigError(f"{path}: plugins.{key} must be a plugin name, not {value!r}")
        settings = data
        break
    for key in PLUGIN_KEYS:
        env_value = env.get(f"DISPY_{key.upper()}")
        if env_value:
            values[key] = _as_names(env_value, key, f"DISPY_{key.upper()}") if key in (
                "executors", "extras") else env_value.strip()
            source += f" + DISPY_{key.upper()}"
    values["settings"] = MappingProxyType(settings)
    values["source"] = source
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
