"""The ``ntshim`` command: ``ntshim info`` (what this machine supports) and ``ntshim demo``.

One class per subcommand, each with ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, _kernel
from .writewatch import registry


def machine_facts() -> dict[str, Any]:
    """The facts about this machine every report starts with."""
    uffd = _kernel.userfaultfd()
    return {
        "ntshim": __version__,
        "python": platform.python_version(),
        "kernel": {
            "release": _kernel.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "page_size": _kernel.PAGE_SIZE,
        },
        "userfaultfd": {
            "usable": uffd.usable,
            "reason": uffd.reason,
            "kernel_faults": uffd.kernel_faults,
            "features": uffd.feature_names(),
        },
    }


class InfoCommand:
    name = "info"
    help = "what this kernel supports: every backend, available or not and why"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for machines")

    def run(self, args: argparse.Namespace) -> int:
        report = machine_facts()
        backends = registry.backends()
        default = next((b.backend for b in backends if b.available), None)
        forced = os.environ.get(registry.ENV_VAR) or None
        report["writewatch"] = {
            "default": forced or default,
            "forced_by_environment": forced,
            "backends": [
                {
                    "name": b.backend,
                    "available": b.available,
                    "reason": b.reason,
                    "notes": list(b.notes),
                    "summary": registry.BY_NAME[b.backend].summary,
                }
                for b in backends
            ],
        }
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            print()
            return 0
        self._print(report)
        return 0

    def _print(self, report: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        k, u = report["kernel"], report["userfaultfd"]
        console.print(
            f"[bold]ntshim {report['ntshim']}[/bold]  Python {report['python']}  "
            f"Linux {k['release']} {k['machine']}  {k['cpus']} CPUs  page {k['page_size']} bytes"
        )
        if u["usable"]:
            mode = "kernel and user faults" if u["kernel_faults"] else "user-mode faults only (UFFD_USER_MODE_ONLY)"
            console.print(f"userfaultfd: {mode}; features {', '.join(u['features']) or 'none'}")
        else:
            console.print(f"userfaultfd: [red]{u['reason']}[/red]")
        ww = report["writewatch"]
        table = Table(title="write-watch backends (best first)", title_justify="left")
        table.add_column("backend")
        table.add_column("available")
        table.add_column("mechanism")
        table.add_column("why not / notes")
        for b in ww["backends"]:
            ok = "[green]yes[/green]" if b["available"] else "[red]no[/red]"
            table.add_row(b["name"], ok, b["summary"], b["reason"] or "\n".join(b["notes"]))
        console.print(table)
        source = f" (from {registry.ENV_VAR})" if ww["forced_by_environment"] else ""
        console.print(f"default backend: [bold]{ww['default']}[/bold]{source}")


class DemoCommand:
    name = "demo"
    help = "watch a small region with every available backend and show what each reports"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pages", type=int, default=64, help="pages in the demo region (default 64)")

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.table import Table

        from .memory import alloc

        if args.pages < 32:
            raise SystemExit("ntshim demo: --pages must be at least 32")
        ps = _kernel.PAGE_SIZE
        title = f"writes into a {args.pages}-page region, then dirty(reset=True) twice"
        table = Table(title=title, title_justify="left")
        for column in ("backend", "written pages", "1st dirty(reset=True)", "2nd", "as expected"):
            table.add_column(column)
        written = [3, 4, 10, 20, args.pages - 1]
        for b in registry.backends():
            if not b.available:
                table.add_row(b.backend, "-", f"unavailable: {b.reason}", "-", "-")
                continue
            with alloc(args.pages * ps, watch=True, backend=b.backend) as region:
                with memoryview(region) as view:
                    for page in (3, 4, 10, args.pages - 1):
                        view[page * ps + 100] = 0xAB
                # A write made by the kernel: read(2) from a pipe into page 20.
                r, w = os.pipe()
                try:
                    os.write(w, b"from the kernel")
                    with region.writing(20 * ps, ps) as window:
                        os.readv(r, [window])
                finally:
                    os.close(r)
                    os.close(w)
                first = region.dirty(reset=True)
                second = region.dirty(reset=True)
            ok = [o // ps for o in first] == written and len(second) == 0
            table.add_row(
                b.backend,
                str(written),
                str([o // ps for o in first]),
                str([o // ps for o in second]),
                "[green]yes[/green]" if ok else "[red]NO[/red]",
            )
        Console().print(table)
        return 0


COMMANDS = (InfoCommand(), DemoCommand())


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
    return args.handler.run(args)
