"""``zotune train``: fine-tune a language model forward-only.

With no arguments it runs the embedded default: SmolLM2-135M on the offline ``mr`` task with MeZO
and prefix tuning, sized to finish in about 10 minutes on a 2-core CPU (docs/finetuning.md has the numbers).
Options come from defaults < ``--config FILE`` (TOML or YAML, flat or with [model] [data] [method] [run]
tables) < command-line flags. A run checkpoints every --checkpoint-every steps and on Ctrl-C / SIGTERM;
``zotune train --resume RUN_DIR`` continues it exactly where it stopped.

Methods (zotune methods lists their options): {methods}; combine parts with +, e.g. kerzoo+pezo+dizo.
"""

from __future__ import annotations

import argparse
import json
import sys

from zotune.cli._common import add_config_flags, given_flags, run_guarded

_RESUME_ALLOWED = {"progress"}  # a resumed run keeps its config; only the progress bar may change


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from zotune.methods import available_methods

    parser = subparsers.add_parser(
        "train", help="fine-tune a language model with a ZO method (default: SmolLM2-135M on mr)",
        description=__doc__.replace("{methods}", ", ".join(available_methods())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML, YAML or JSON file of options (flags override it)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue an interrupted run from its last checkpoint (same config; bit-exact)")
    add_config_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from zotune.train.checkpoint import CheckpointError
        from zotune.train.config import load_config_file, resolve_config
        from zotune.train.loop import RunInterrupted, TrainingDiverged, resume, train

        flags = given_flags(args)
        try:
            if args.resume:
                refused = sorted(set(flags) - _RESUME_ALLOWED) + (["config"] if args.config else [])
                if refused:
                    raise ValueError(f"--resume continues a run with its own config; drop --{refused[0].replace('_', '-')}")
                summary = resume(args.resume, progress=flags.get("progress"))
            else:
                file_values = load_config_file(args.config) if args.config else {}
                summary = train(resolve_config(file_values, flags))
        except RunInterrupted as exc:
            return exc.exit_code
        except (TrainingDiverged, CheckpointError) as exc:
            print(f"zotune train: error: {exc}", file=sys.stderr)
            return 1
        metric = summary["metric"]
        zs = summary.get("zero_shot", {}).get("test", {}).get(metric)
        final = summary.get("final") or {}
        print(json.dumps({"run_folder": summary["run_folder"], "status": summary["status"], "metric": metric,
                          "zero_shot_test": zs, "fine_tuned_test": (final.get("test") or {}).get(metric),
                          "steps": summary["steps"], "forward_passes": summary.get("forward_passes", 0),
                          "seed_log_bytes": summary.get("seed_log_bytes"),
                          "wall_seconds": round(summary["wall_seconds"], 1)}))
        return 0

    return run_guarded("train", body)
