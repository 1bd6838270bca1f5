"""What every dispy command's argument parser shares: ``--version``, one-line errors, the log options.

argparse prints the whole usage above an error; for a command with thirty options that buries the
one line that says what is wrong. Here an error is that one line, with where to look, and exit
status 2 (argparse's, kept: scripts test for it).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from dispy_core import __version__


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: error: WHAT (PROG --help lists the options)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def version_text(prog: str) -> str:
    return f"{prog} {__version__} (neodispy)"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the version and exit")


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log_json`` for the servers (the ``-d/--debug`` each already has stays where it is)."""
    parser.add_argument("--log_json", action="store_true",
                        help="log one JSON object per line (time, level, logger, message, pid); "
                             "also $DISPY_LOG_FORMAT=json")
