"""``ntshim snapshot``: what a checkpoint holds (``info``) and whether every generation of it
can be loaded (``verify``).

Exit status: 0 when all is well; 1 when ``verify`` found damage (each problem printed,
naming the generation and the file); 2 when ``PATH`` is not a checkpoint (missing, not a
directory, no generation yet), like a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..snapshot import GenerationInfo, SnapshotError, describe_generations, verify


def _size(n: int) -> str:
    """Bytes, with a binary unit for the eye."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n:,} ({n / (1 << shift):.1f} {unit})"
    return f"{n:,}"


class SnapshotCommand:
    name = "snapshot"
    help = "inspect checkpoints of ntshim.snapshot: `ntshim snapshot info PATH`, `ntshim snapshot verify PATH`"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = which.add_parser(
            "info",
            help="every generation: base or delta, parent, bytes stored and on disk, pages, buffers; totals",
            description="Reads the manifests only (no data file): see `verify` for the checksums.  The ratio "
            "is the bytes a full copy of every generation would take over the bytes the checkpoint takes on "
            "disk (data files, checksums and manifests).",
        )
        p.add_argument("path", metavar="PATH", help="a checkpoint directory")
        p.add_argument("--json", action="store_true", help="print JSON for machines")
        p.set_defaults(action_run=self._info)
        q = which.add_parser(
            "verify",
            help="read every data file in full against its checksums and check every generation's chain; "
            "exit 1 naming the generation and file of any damage",
            description="Every manifest, every byte of every data file (against its CRC32C) and every chain "
            "of base and deltas.  Exit status 0: every generation can be loaded; 1: damage found (each "
            "problem printed); 2: PATH is not a checkpoint.",
        )
        q.add_argument("path", metavar="PATH", help="a checkpoint directory")
        q.set_defaults(action_run=self._verify)

    def run(self, args: argparse.Namespace) -> int:
        return int(args.action_run(args))

    @staticmethod
    def _not_a_checkpoint(path: str, error: OSError) -> int:
        reason = error.strerror if error.strerror and not str(error).startswith("the checkpoint") else str(error)
        print(f"ntshim snapshot: {path} is not a checkpoint: {reason}", file=sys.stderr)
        return 2

    def _info(self, args: argparse.Namespace) -> int:
        try:
            infos = describe_generations(args.path)
        except (FileNotFoundError, NotADirectoryError) as error:
            return self._not_a_checkpoint(args.path, error)
        except SnapshotError as error:
            print(f"ntshim snapshot info: {error}; `ntshim snapshot verify` checks the rest", file=sys.stderr)
            return 1
        totals = self.totals(infos)
        if args.json:
            json.dump({"path": args.path, "generations": [g.__dict__ for g in infos], "totals": totals},
                      sys.stdout, indent=1)  # fmt: skip
            print()
            return 0
        self._print(args.path, infos, totals)
        return 0

    @staticmethod
    def totals(infos: list[GenerationInfo]) -> dict[str, Any]:
        """Sums over the generations; ``ratio``: bytes a full copy of each generation would
        take over bytes on disk (None without generations)."""
        state = sum(g.state_bytes for g in infos)
        disk = sum(g.disk_bytes for g in infos)
        return {
            "generations": len(infos),
            "bases": sum(g.parent is None for g in infos),
            "state_bytes": state,
            "data_bytes": sum(g.data_bytes for g in infos),
            "disk_bytes": disk,
            "pages": sum(g.pages for g in infos),
            "ratio": state / disk if disk else None,
        }

    @staticmethod
    def _print(path: str, infos: list[GenerationInfo], totals: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 150)
        if not infos:
            console.print(f"{path}: a checkpoint with no generation yet")
            return
        table = Table(title=f"checkpoint {path}: {len(infos)} generation(s)", title_justify="left")
        for column, justify in [("generation", "right"), ("kind", "left"), ("parent", "right"),
                                ("state bytes", "right"), ("stored bytes", "right"), ("on disk", "right"),
                                ("pages", "right"), ("buffers", "left")]:  # fmt: skip
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for g in infos:
            table.add_row(
                str(g.generation), "base" if g.parent is None else "delta", "-" if g.parent is None else str(g.parent),
                f"{g.state_bytes:,}", f"{g.data_bytes:,}", f"{g.disk_bytes:,}", f"{g.pages:,}",
                ", ".join(f"{name} ({size:,})" for name, size in g.buffers),
            )  # fmt: skip
        console.print(table)
        console.print(
            f"total: {totals['generations']} generation(s), {totals['bases']} base(s); "
            f"on disk {_size(totals['disk_bytes'])}, stored data {_size(totals['data_bytes'])}, "
            f"{totals['pages']:,} pages"
        )
        console.print(
            f"ratio: {totals['ratio']:.2f}x  (a full copy of every generation would take "
            f"{_size(totals['state_bytes'])}; no compression yet: the ratio is what deltas save)"
        )

    def _verify(self, args: argparse.Namespace) -> int:
        try:
            problems = verify(args.path)
            infos = describe_generations(args.path) if not problems else []
        except (FileNotFoundError, NotADirectoryError) as error:
            return self._not_a_checkpoint(args.path, error)
        if problems:
            for problem in problems:
                print(f"ntshim snapshot verify: generation {problem.generation}, {problem.file}: {problem}",
                      file=sys.stderr)  # fmt: skip
            print(f"ntshim snapshot verify: {args.path}: {len(problems)} problem(s) found", file=sys.stderr)
            return 1
        data = sum(g.data_bytes for g in infos)
        print(f"ok: {len(infos)} generation(s) in {args.path}, every chain loadable, {data:,} bytes of data verified")
        return 0


__all__ = ["SnapshotCommand"]
