"""Helpers shared by the LLM subcommands: custom-task flags and turning errors into clear messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Errors caused by the user's input: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("custom task (your own JSONL/CSV file)")
    group.add_argument("--data", help="training data file (.jsonl or .csv)")
    group.add_argument("--test-data", help="held-out file (default: a fixed 20%% of --data)")
    group.add_argument("--template", help="prompt template over the row's fields, e.g. '{text} It was'")
    group.add_argument("--label-words", help="'label=word,...' or 'word0,word1,...' (classification)")
    group.add_argument("--label-field", help="label column (default: label)")
    group.add_argument("--answer-field", help="answer column (generation tasks)")
    group.add_argument("--data-dir", help="hub task: folder with train.jsonl / validation.jsonl in the hub schema")


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
