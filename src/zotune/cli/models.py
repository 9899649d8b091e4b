"""``zotune models``: list the embedded model aliases (any hub id or local folder works too)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("models", help="list the embedded model aliases", description=__doc__)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from zotune.llm.data import cache_dir
    from zotune.llm.models import MODEL_ALIASES

    width = max(len(n) for n in MODEL_ALIASES)
    for name, alias in sorted(MODEL_ALIASES.items()):
        cached = (cache_dir() / "models" / name / "config.json").is_file()
        print(f"{name:<{width}}  {'cached' if cached else 'not cached (fetched on first use)':<34}  {alias.description}")
    print("\nAlso: any Hugging Face causal LM by hub id (e.g. facebook/opt-125m) or a local folder.")
    return 0
