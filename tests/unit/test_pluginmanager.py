"""Plugin selection (stevedore) and hook calling (pluggy), one manager per cluster or server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pluggy
import pytest

from dispy_core.config import Config, load_config
from dispy_core.errors import ConfigError, PluginNotFound
from dispy_core.hookspecs import hookimpl
from dispy_core.interfaces import JobExecutor, Scheduler, Serializer, Transport
from dispy_core.pluginmanager import DispyPluginManager, installed_plugins


def test_first_party_plugins_are_entry_points() -> None:
    names = {role: {p.name for p in installed_plugins(role)}
             for role in ("transport", "discovery", "scheduler", "serializer", "executor")}
    assert names["transport"] >= {"tcp"} and names["discovery"] >= {"udp"}
    assert names["scheduler"] >= {"loadbalance"} and names["serializer"] >= {"pickle"}
    assert names["executor"] >= {"fork", "spawn"}
    assert all(p.distribution == "neodispy" for p in installed_plugins("executor"))


def test_factories_return_protocol_objects() -> None:
    client = DispyPluginManager(Config(role="client"))
    assert isinstance(client.make_transport("tcp"), Transport)
    assert isinstance(client.make_serializer("pickle"), Serializer)
    assert isinstance(client.make_scheduler(), Scheduler)
    node = DispyPluginManager(Config(role="node"))
    assert isinstance(node.make_executor(), JobExecutor)
    assert node.make_executor().name == "fork"
    assert node.hook.dispy_make_executor(config=node.config) is not None
    spawn_first = DispyPluginManager(Config(role="node", executors=("spawn", "fork")))
    assert spawn_first.make_executor().name == "spawn"


def test_unknown_plugin_name_lists_installed() -> None:
    with pytest.raises(PluginNotFound) as info:
        DispyPluginManager(Config(role="client", scheduler="nosuch"))
    assert "nosuch" in str(info.value) and "loadbalance" in str(info.value)
    with pytest.raises(PluginNotFound, match="fork, spawn"):
        DispyPluginManager(Config(role="node", executors=("fork", "turbo")))


def test_no_shared_state_between_managers() -> None:
    a = DispyPluginManager(Config(role="client"))
    b = DispyPluginManager(Config(role="client"))
    assert a.pm is not b.pm

    class Marker:
        @hookimpl
        def dispy_allocate(self, cluster: Any, node: Any, cpus: int) -> int:
            return 1

    a.register(Marker())
    assert a.hook.dispy_allocate(cluster=None, node=None, cpus=4) == 1
    assert b.hook.dispy_allocate(cluster=None, node=None, cpus=4) is None


def test_historic_hooks_reach_late_plugins() -> None:
    manager = DispyPluginManager(Config(role="client"))
    seen: dict[str, Any] = {}

    class Late:
        @hookimpl
        def dispy_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
            seen["pm"] = pluginmanager

        @hookimpl
        def dispy_addoption(self, options: dict[str, Any], role: str) -> None:
            options["late.answer"] = 42
            seen["role"] = role

        @hookimpl
        def dispy_configure(self, config: Config) -> None:
            seen["config"] = config

    manager.register(Late())
    assert seen == {"pm": manager.pm, "role": "client", "config": manager.config}
    assert manager.setting("late.answer") == 42


def test_site_config_and_environment(tmp_path: Path) -> None:
    site = tmp_path / "dispy.toml"
    site.write_text('[plugins]\nscheduler = "roundrobin"\nexecutors = ["spawn"]\n[pulsetag]\ntag = "rack-7"\n')
    config = load_config("node", env={"DISPY_CONFIG": str(site)})
    assert config.scheduler == "roundrobin" and config.executors == ("spawn",)
    assert config.get("pulsetag.tag") == "rack-7" and config.source == str(site)
    config = load_config("node", env={"DISPY_CONFIG": str(site), "DISPY_EXECUTORS": "fork, spawn"})
    assert config.executors == ("fork", "spawn")
    site.write_text("[plugins]\nschedular = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key plugins.schedular"):
        load_config("client", env={"DISPY_CONFIG": str(site)})
    site.write_text("[plugins\n")
    with pytest.raises(ConfigError, match="cannot read site config"):
        load_config("client", env={"DISPY_CONFIG": str(site)})
    with pytest.raises(ConfigError, match="not a readable file"):
        load_config("client", env={"DISPY_CONFIG": str(tmp_path / "missing.toml")})
    user_dir = tmp_path / "xdg"
    (user_dir / "dispy").mkdir(parents=True)
    (user_dir / "dispy" / "config.toml").write_text('[plugins]\nserializer = "pickle"\n')
    assert load_config("client", env={"XDG_CONFIG_HOME": str(user_dir)}).source.endswith("config.toml")


def test_dispy_plugins_command_lists_roles_versions_and_selection(tmp_path: Path) -> None:
    site = tmp_path / "dispy.toml"
    site.write_text('[plugins]\nscheduler = "roundrobin"\n')
    out = subprocess.run([sys.executable, "-m", "dispy_core.cli", "plugins"], capture_output=True, text=True,
                         env={"DISPY_CONFIG": str(site), "PATH": "/usr/bin:/bin"}, timeout=60, check=True).stdout
    assert f"configuration from {site}" in out
    for role in ("transport", "discovery", "scheduler", "serializer", "executor"):
        assert f"{role} (dispy.{role})" in out
    assert "* roundrobin" in out and "  loadbalance" in out
    assert "* fork" in out and "neodispy 0.1.0" in out and "dispy-roundrobin 0.1.0" in out
    assert "security: secret NOT set" in out and "TLS not configured" in out
