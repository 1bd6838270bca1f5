"""``--config FILE`` / ``--save_config FILE`` (dispynode, dispyscheduler): the command line's options in a file.

TOML (like the site config) or JSON: a name ending in ``.toml`` or ``.json`` decides, else the content
(JSON starts with ``{``). Keys are the options' long names without dashes (``dispy_port = 9700``,
``cpus``, ``host = ["127.0.0.1"]``...), at the top level: ``[plugins]`` and the other sections belong
in the site config, not here. The file gives defaults; options on the command line override them.
Values go through the same argparse conversions and checks as the command line, so a bad value fails
the same way (exit 2, one line naming the file and the option). ``--save_config`` writes TOML when the
name ends in ``.toml``, else JSON; both read back to the same options (every value is a string, a
number, a flag or a list of strings, which both write with the standard library: TOML by hand here).

Secrets (``secret``, ``admin_secret``) are never written: authenticating needs the secret itself, so
no harmless form of it could be stored. A saved file says so; give them with ``-s``, ``--admin_secret``
or ``$DISPY_SECRET``. A file written by hand may still contain them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

SECRET_KEYS = frozenset({"secret", "admin_secret"})
NOT_SAVED = frozenset({"config", "save_config", "help"}) | SECRET_KEYS
NOTE_KEY = "_note"


SITE_SECTIONS = frozenset({"plugins", "security", "transport", "node", "client", "scheduler", "discovery"})
"""Tables of the site config: given to ``--config``, they get an error that says where they belong."""


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions
            if action.dest not in ("help", argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)}


def is_toml(path: str, text: str) -> bool:
    """TOML or JSON: by the file name's extension, else by content (a JSON object starts with ``{``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".toml", ".json"):
        return suffix == ".toml"
    return not text.lstrip().startswith("{")


def read_options_file(path: str) -> dict[str, Any]:
    """The file's options; ValueError with one line naming the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--config {path!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--config {path!r} cannot be read: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    if is_toml(path, text):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {path!r} is not valid TOML: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path!r} must hold a JSON object of option names and values")
    return data


def load_file_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the options in ``path`` the parser's defaults; ``parser.error`` (exit 2) on any problem."""
    try:
        data = read_options_file(path)
    except ValueError as exc:
        parser.error(str(exc))
    actions = _actions(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue  # comments, such as the note a saved file carries
        if isinstance(value, dict):
            where = ("a section of the site config ($DISPY_CONFIG, ~/.config/dispy/config.toml or "
                     "/etc/dispy/config.toml)" if key in SITE_SECTIONS else "a section, and options have none")
            parser.error(f"--config {path!r}: [{key}] is {where}; --config takes option names and values at the "
                         f"top level (cpus = 4)")
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
    text = str(value)
    if callable(action.type):  # argparse converts string defaults with the option's type later: check it here,
        try:  # where the error can name the file
            action.type(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            kind = getattr(action.type, "__name__", "")
            reason = str(exc) if isinstance(exc, argparse.ArgumentTypeError) or not kind else f"invalid {kind} value"
            parser.error(f"{where}: {reason}: {value!r}")
    return text  # argparse converts (and checks) string defaults with the option's type


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
    """Write atomically (a crash leaves the old file or the new one, never half of one): TOML when the
    name ends in ``.toml``, else JSON."""
    target = Path(path)
    toml = target.suffix.lower() == ".toml"
    text = toml_text(options) if toml else json.dumps(options, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".dispynode-", suffix=target.suffix or ".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def toml_text(options: dict[str, Any]) -> str:
    """``options`` as TOML: the note (``_note``) as a comment, then ``key = value`` sorted by key. Options
    whose value is None (not set) are left out: reading the file back leaves them at their defaults."""
    lines = [f"# {options[NOTE_KEY]}"] if NOTE_KEY in options else []
    for key in sorted(options):
        value = options[key]
        if key.startswith("_") or value is None:
            continue
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML's own forms: 10.0, 1e+20, inf, -inf, nan
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(key, item) for item in value) + "]"
    raise ValueError(f"option {key!r} has a value TOML cannot hold here: {value!r}")


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
