"""``ntshim demo``: watch a small region with every available backend and show what each reports."""

from __future__ import annotations

import argparse
import os

from .. import _kernel
from ..writewatch import registry


class DemoCommand:
    name = "demo"
    help = "watch a small region with every available backend and show what each reports"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pages", type=int, default=64, help="pages in the demo region (default 64)")

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.table import Table

        from ..memory import alloc, watch

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
            with alloc(args.pages * ps) as region, watch(region, backend=b.backend) as ww:
                with memoryview(region) as view:
                    for page in (3, 4, 10, args.pages - 1):
                        view[page * ps + 100] = 0xAB
                # A write made by the kernel: read(2) from a pipe into page 20.
                r, w = os.pipe()
                try:
                    os.write(w, b"from the kernel")
                    with ww.writing(20 * ps, ps) as window:
                        os.readv(r, [window])
                finally:
                    os.close(r)
                    os.close(w)
                first = ww.dirty(reset=True)
                second = ww.dirty(reset=True)
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
