"""Helpers shared by the subcommands: flags generated from the config sections, and errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

# Errors caused by the user's input: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, NotADirectoryError, PermissionError)


def _format_default(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser, sections: Iterable[str] | None = None,
                     only: set[str] | None = None) -> None:
    """One flag per config field (``zotune.train.config``), grouped by section, with the field's help and
    default written once in the dataclass. Every flag defaults to ``None`` (not given), so a config file's
    value is only overridden by a flag the user typed. Booleans that default to on get ``--no-<name>``."""
    from zotune.methods import available_methods
    from zotune.train.config import config_fields

    wanted = set(sections) if sections is not None else None
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in config_fields():
        if not f.cli or (wanted is not None and f.section not in wanted) or (only is not None and f.key not in only):
            continue
        group = groups.get(f.section) or parser.add_argument_group(f.section)
        groups[f.section] = group
        help_text = f.help.replace("{methods}", ", ".join(available_methods()))
        if f.type is bool:
            if f.default:
                group.add_argument(f"--no-{f.key.replace('_', '-')}", dest=f.key, action="store_false", default=None,
                                   help=f"{help_text} [on; this flag turns it off]")
            else:
                group.add_argument(f.flag, dest=f.key, action="store_true", default=None, help=f"{help_text} [off]")
            continue
        if f.choices:  # checked by the config (a one-line error), listed here
            help_text = f"{help_text}: {', '.join(f.choices)}"
        shown = f" [{_format_default(f.default)}]" if f.default is not None else ""
        group.add_argument(f.flag, dest=f.key, default=None, metavar=f.key.upper(), help=f"{help_text}{shown}")


def given_flags(args: argparse.Namespace) -> dict[str, object]:
    """The config values the user typed (raw strings; the config dataclasses convert and check them)."""
    from zotune.train.config import config_fields

    return {f.key: getattr(args, f.key) for f in config_fields() if getattr(args, f.key, None) is not None}


def run_guarded(name: str, func: Callable[[], int]) -> int:
    """Run a subcommand body; user errors become ``zotune NAME: error: ...`` on stderr and status 2."""
    try:
        return func()
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"zotune {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zotune {name}: interrupted", file=sys.stderr)
        return 130
