"""The ``ntshim`` command.  One module and class per subcommand, each with
``add_arguments(parser)`` and ``run(args) -> exit status``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import __version__
from .bench import BenchCommand
from .demo import DemoCommand
from .info import InfoCommand
from .snapshot import SnapshotCommand

COMMANDS = (InfoCommand(), DemoCommand(), BenchCommand(), SnapshotCommand())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntshim", description="Windows NT memory and sync primitives on Linux")
    parser.add_argument("--version", action="version", version=f"ntshim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(handler=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.handler.run(args))
