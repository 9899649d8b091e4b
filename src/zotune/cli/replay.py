"""``zotune replay``: rebuild a run's fine-tuned weights from the base model and the run's seed log alone.

The seed log (``seeds.log`` in the run folder, a few bytes per step) holds each step's probe losses and
hyperparameters; with the run's config and the base model they give the trained weights bit for bit,
with no data and no forward pass.
"""

from __future__ import annotations

import argparse
import json
import sys

from zotune.cli._common import run_guarded


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("replay", help="rebuild a run's weights from its seed log", description=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of zotune train")
    parser.add_argument("--out", required=True, help="a new or empty folder for the rebuilt checkpoint")
    parser.add_argument("--step", default="best",
                        help="best (the run's best-dev step: what its checkpoint/ holds), last, or a step number [best]")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from zotune.train.replay_run import replay_run

        result = replay_run(args.run_dir, args.out, step=args.step, progress=args.progress and sys.stderr.isatty())
        print(json.dumps(result))
        return 0

    return run_guarded("replay", body)
