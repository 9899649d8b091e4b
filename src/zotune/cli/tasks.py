"""``zotune tasks``: list the tasks ``zotune train --task`` accepts."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("tasks", help="list the available tasks", description=__doc__)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from zotune.llm.tasks import available_tasks, get_task

    rows = [(t.name, t.kind, t.metric, t.description, t.source) for t in map(get_task, available_tasks())]
    width = max(len(r[0]) for r in rows)
    print(f"{'task':<{width}}  {'kind':<15}  {'metric':<8}  description  [data]")
    for name, kind, metric, description, source in rows:
        print(f"{name:<{width}}  {kind:<15}  {metric:<8}  {description}  [{source}]")
    print("\ncustom: --data FILE.jsonl|csv --template '{text} It was' --label-words 'neg=terrible,pos=great' "
          "(or --answer-field for generation)")
    return 0
