"""Selecting and loading plugins: stevedore chooses which code by name, pluggy calls it.

This is the only module that imports stevedore. There is no module-level manager: each cluster or
server builds its own :class:`DispyPluginManager` from its own :class:`Config`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import pluggy
from stevedore import DriverManager, NamedExtensionManager
from stevedore.exception import NoMatches

from dispy_core import hookspecs
from dispy_core.config import Config
from dispy_core.errors import ConfigError, PluginNotFound

ROLE_GROUPS: dict[str, str] = {
    "transport": "dispy.transport",
    "discovery": "dispy.discovery",
    "scheduler": "dispy.scheduler",
    "policy": "dispy.policy",
    "serializer": "dispy.serializer",
    "executor": "dispy.executor",
    "extra": "dispy.plugins",
}


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    role: str
    name: str
    target: str
    distribution: str
    version: str


def installed_plugins(role: str) -> list[InstalledPlugin]:
    """Every plugin installed for a role, from the entry points (sorted by name)."""
    group = ROLE_GROUPS[role]
    found = []
    for ep in importlib.metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        found.append(InstalledPlugin(role, ep.name, ep.value, dist.name if dist else "?",
                                     dist.version if dist else "?"))
    return sorted(found, key=lambda p: p.name)


def _load_one(role: str, name: str) -> Any:
    try:
        return DriverManager(ROLE_GROUPS[role], name, invoke_on_load=False,
                             on_load_failure_callback=_raise_load_failure).driver
    except NoMatches:
        raise PluginNotFound(role, name, [p.name for p in installed_plugins(role)]) from None
    except RuntimeError as exc:  # stevedore: several entry points with one name
        raise ConfigError(f"{role} plugin {name!r}: {exc}") from exc


def _raise_load_failure(manager: Any, entrypoint: Any, exc: BaseException) -> None:
    raise ConfigError(f"plugin {entrypoint.name!r} ({entrypoint.value}) failed to load: {exc}") from exc


def _load_ordered(role: str, names: tuple[str, ...]) -> list[Any]:
    known = {p.name for p in installed_plugins(role)}
    missing = [n for n in names if n not in known]
    if missing:
        raise PluginNotFound(role, missing[0], sorted(known))
    manager = NamedExtensionManager(ROLE_GROUPS[role], names=list(names), name_order=True,
                                    invoke_on_load=False, on_load_failure_callback=_raise_load_failure)
    by_name = {ext.name: ext.plugin for ext in manager}
    return [by_name[name] for name in names]


class DispyPluginManager:
    """One per cluster or server: the selected plugins registered with a pluggy manager."""

    def __init__(self, config: Config, roles: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.hook = self.pm.hook
        self.selected: dict[str, list[str]] = {}
        wanted = roles or _ROLES_BY_SERVER_ROLE.get(config.role, tuple(ROLE_GROUPS))
        self._executor_modules: list[Any] = []
        for role in wanted:
            if role == "executor":
                self._executor_modules = _load_ordered("executor", config.executors)
                self.selected["executor"] = list(config.executors)
                for module in self._executor_modules:
                    self._register(module, "executor")
            elif role == "extra":
                for module in _load_ordered("extra", config.extras):
                    self._register(module, "extra")
                self.selected["extra"] = list(config.extras)
            else:
                name = getattr(config, role)
                self._register(_load_one(role, name), role)
                self.selected[role] = [name]
        self.options: dict[str, Any] = {}
        self.hook.dispy_addhooks.call_historic(kwargs={"pluginmanager": self.pm})
        self.hook.dispy_addoption.call_historic(kwargs={"options": self.options, "role": config.role})
        self.hook.dispy_configure.call_historic(kwargs={"config": config})

    def setting(self, key: str) -> Any:
        """A plugin option: the site config's value if set, else the default the plugin declared."""
        return self.config.get(key, self.options.get(key))

    def _register(self, module: Any, role: str) -> None:
        if self.pm.is_registered(module):
            return
        self.pm.register(module, name=f"{role}:{module.__name__}")

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Add an extra plugin object (tests, monitor)."""
        self.pm.register(plugin, name=name)

    # ------------------------------------------------------------------ factories
    def make_transport(self, scheme: str = "tcp") -> Any:
        return self._required(self.hook.dispy_make_transport(config=self.config, scheme=scheme),
                              "transport", scheme)

    def make_serializer(self, name: str | None = None) -> Any:
        name = name or self.config.serializer
        return self._required(self.hook.dispy_make_serializer(config=self.config, name=name),
                              "serializer", name)

    def make_executor(self) -> Any:
        """The first executor, in the configured order, that can run here (an extra plugin may override)."""
        for module in self._executor_modules:
            others = [other for other in self._executor_modules if other is not module]
            caller = self.pm.subset_hook_caller("dispy_make_executor", remove_plugins=others)
            executor = caller(config=self.config)
            if executor is not None:
                return executor
        return self._required(self.hook.dispy_make_executor(config=self.config), "executor",
                              ",".join(self.config.executors))

    def make_discovery(self) -> Any:
        return self._required(self.hook.dispy_make_discovery(config=self.config), "discovery",
                              self.config.discovery)

    def make_scheduler(self) -> Any:
        return self._required(self.hook.dispy_make_scheduler(config=self.config), "scheduler",
                              self.config.scheduler)

    def make_policy(self) -> Any:
        """dispyscheduler's policy between computations, by the configured name."""
        return self._required(self.hook.dispy_make_policy(config=self.config, name=self.config.policy), "policy",
                              self.config.policy)

    @staticmethod
    def _required(result: Any, role: str, name: str) -> Any:
        if result is None:
            raise ConfigError(f"no selected {role} plugin can provide {name!r} on this platform")
        return result


_ROLES_BY_SERVER_ROLE: dict[str, tuple[str, ...]] = {
    "client": ("transport", "discovery", "scheduler", "serializer", "extra"),
    "node": ("transport", "discovery", "serializer", "executor", "extra"),
    "scheduler": ("transport", "discovery", "scheduler", "policy", "serializer", "extra"),
    "relay": ("transport", "discovery", "extra"),
    "job": ("serializer",),
}


def load_serializer(name: str, config: Config | None = None) -> Any:
    """A serializer by name for processes that need nothing else (job hosts)."""
    config = (config or Config(role="job")).replace(serializer=name)
    return DispyPluginManager(config, roles=("serializer",)).make_serializer(name)
