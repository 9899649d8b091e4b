"""``zotune bench``: benchmarks that print ratios measured side by side in one run."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="benchmarks (step cost, memory)")
    kinds = parser.add_subparsers(dest="bench", metavar="BENCHMARK")

    from zotune.bench import step

    step_parser = kinds.add_parser(
        "step",
        help="time a ZO step against two forward passes and MeZO's reference design; peak memory vs inference",
    )
    step.add_arguments(step_parser)
    step_parser.set_defaults(func=_run_step)

    memory_parser = kinds.add_parser("memory", help="(internal) peak RSS of one mode, in this process")
    memory_parser.add_argument("--mode", choices=["infer", "train", "reference"], required=True)
    memory_parser.add_argument("--batch", type=int, default=16)
    memory_parser.add_argument("--length", type=int, default=64)
    memory_parser.add_argument("--steps", type=int, default=2)
    memory_parser.add_argument("--layers", type=int, default=None)
    memory_parser.add_argument("--sampler", default="gaussian")
    memory_parser.set_defaults(func=_run_memory)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser


def _run_step(args: argparse.Namespace) -> int:
    from zotune.bench.step import run_step_benchmark

    print(json.dumps(run_step_benchmark(args)))
    return 0


def _run_memory(args: argparse.Namespace) -> int:
    from zotune.bench.step import run_memory_mode

    print(json.dumps(run_memory_mode(args.mode, args.batch, args.length, args.steps, args.layers, args.sampler)))
    return 0
