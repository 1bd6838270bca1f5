"""``--config FILE`` / ``--save_config FILE`` (dispynode, dispyscheduler): the command line's options in a JSON file.

JSON, because it round-trips every option type we have (numbers, flags, lists) with the standard
library alone. Keys are the options' long names without dashes (``dispy_port``, ``cpus``, ``host``...).
The file gives defaults; options on the command line override them. Values go through the same
argparse conversions and checks as the command line, so a bad value fails the same way (exit 2).

Secrets (``secret``, ``admin_secret``) are never written: authenticating needs the secret itself, so
no harmless form of it could be stored. A saved file says so; give them with ``-s``, ``--admin_secret``
or ``$DISPY_SECRET``. A file written by hand may still contain them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

SECRET_KEYS = frozenset({"secret", "admin_secret"})
NOT_SAVED = frozenset({"config", "save_config", "help"}) | SECRET_KEYS
NOTE_KEY = "_note"


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest not in ("help", argparse.SUPPRESS)}


def load_file_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the options in ``path`` the parser's defaults; ``parser.error`` (exit 2) on any problem."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--config {path!r} cannot be read: {exc}")
    except json.JSONDecodeError as exc:
        parser.error(f"--config {path!r} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        parser.error(f"--config {path!r} must hold a JSON object of option names and values")
    actions = _actions(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue  # comments, such as the note a saved file carries
        action = actions.get(key)
        if action is None or key in ("config", "save_config"):
            parser.error(f"--config {path!r}: unknown option {key!r}")
        defaults[key] = _checked(parser, path, key, action, value)
    parser.set_defaults(**defaults)


def _checked(parser: argparse.ArgumentParser, path: str, key: str, action: argparse.Action, value: Any) -> Any:
    where = f"--config {path!r}: option {key!r}"
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            parser.error(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            parser.error(f"{where} must be a string or a list of strings, not {value!r}")
        return list(items)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        parser.error(f"{where} must be a string or a number, not {value!r}")
    return str(value)  # argparse converts (and checks) string defaults with the option's type


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line over the ``--config`` file's options (a repeatable option given on the command
    line replaces the file's list rather than adding to it)."""
    args = parser.parse_args(argv)
    if args.config:
        given = args
        load_file_defaults(parser, args.config)
        args = parser.parse_args(argv)
        for action in parser._actions:
            if isinstance(action, argparse._AppendAction) and getattr(given, action.dest):
                setattr(args, action.dest, getattr(given, action.dest))
    return args


NODE_NOTE = ("written by dispynode --save_config; secret and admin_secret are not saved: give them with "
             "-s/--admin_secret or $DISPY_SECRET")


def saved_options(args: argparse.Namespace, parser: argparse.ArgumentParser, secrets: frozenset[str] = SECRET_KEYS,
                  note: str = NODE_NOTE) -> dict[str, Any]:
    """What ``--save_config`` writes: every option's value, never one of ``secrets``."""
    out: dict[str, Any] = {NOTE_KEY: note}
    for dest in _actions(parser):
        if dest in NOT_SAVED or dest in secrets:
            continue
        out[dest] = getattr(args, dest, None)
    return out


def save_options(path: str, options: dict[str, Any]) -> None:
    """Write atomically (a crash leaves the old file or the new one, never half of one)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".dispynode-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(options, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
