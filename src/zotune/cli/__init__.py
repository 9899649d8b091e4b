"""The ``zotune`` command line: one module per subcommand, registered explicitly below.

Each subcommand module exposes ``add_parser(subparsers) -> argparse.ArgumentParser`` which sets
``func=<callable(args) -> int>`` as the parser default. New subcommands are added to ``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name of the module inside zotune.cli for each subcommand, in the order `zotune --help` lists them
_SUBCOMMANDS: tuple[str, ...] = ("demo", "bench", "train", "eval", "replay", "export", "tasks", "models", "methods")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zotune",
        description="Zeroth-order (forward-only) fine-tuning of language models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"zotune.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # as typed (``train --nproc`` relaunches it)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
