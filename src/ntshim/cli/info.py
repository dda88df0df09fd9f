"""``ntshim info``: what this kernel supports, every backend available or not and why."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import _kernel
from .._backends import Family
from ..errors import BackendUnavailable
from ..memory import placement
from ..sync import registry as sync_registry
from ..writewatch import registry


class InfoCommand:
    name = "info"
    help = "what this kernel supports: every backend, available or not and why"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for machines")

    def run(self, args: argparse.Namespace) -> int:
        report = _kernel.machine()
        report["writewatch"] = self._section(registry.FAMILY)
        report["placement"] = placement.capabilities()
        report["sync"] = self._section(sync_registry.FAMILY)
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            print()
            return 0
        self._print(report)
        return 0

    @staticmethod
    def _section(family: Family[Any]) -> dict[str, Any]:
        """One family of backends: which serves by default, and each with why (not)."""
        backends = family.backends()
        forced = os.environ.get(family.env_var) or None
        try:  # what automatic selection takes (it may stop at a backend refused for this user's reasons)
            default: str | None = family.select(None).name
        except (ValueError, BackendUnavailable):
            default = None
        return {
            "default": forced or default,
            "forced_by_environment": forced,
            "backends": [
                {
                    "name": b.backend,
                    "available": b.available,
                    "reason": b.reason,
                    "notes": list(b.notes),
                    "summary": family.backend_class(b.backend).summary,
                }
                for b in backends
            ],
        }

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
        console.print(f"futex_waitv: {'yes' if report['futex_waitv'] else '[red]no[/red]'}")
        p = report["placement"]

        def yes(flag: object) -> str:
            return "yes" if flag else "[red]no[/red]"

        console.print(
            f"placement: MAP_FIXED_NOREPLACE {yes(p['map_fixed_noreplace'])}, mremap(old_size=0) aliases "
            f"{yes(p['mremap_alias'])}, MREMAP_DONTUNMAP on shared mappings {yes(p['mremap_dontunmap_shared'])}, "
            f"MAP_32BIT {yes(p['map_32bit'])}"
            + (f" (placed at {p['map_32bit_address']:#x}: it searches 1-2 GiB only)" if p["map_32bit"] else "")
            + f", vm.mmap_min_addr {p['mmap_min_addr']:#x}"
        )
        for key, title, env_var in (
            ("writewatch", "write-watch backends (best first)", registry.ENV_VAR),
            ("sync", "sync backends: events, semaphores, mutexes (best first)", sync_registry.ENV_VAR),
        ):
            section = report[key]
            table = Table(title=title, title_justify="left")
            table.add_column("backend")
            table.add_column("available")
            table.add_column("mechanism")
            table.add_column("why not / notes")
            for b in section["backends"]:
                ok = "[green]yes[/green]" if b["available"] else "[red]no[/red]"
                table.add_row(b["name"], ok, b["summary"], b["reason"] or "\n".join(b["notes"]))
            console.print(table)
            source = f" (from {env_var})" if section["forced_by_environment"] else ""
            console.print(f"default backend: [bold]{section['default']}[/bold]{source}")
