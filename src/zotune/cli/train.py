"""``zotune train``: fine-tune a language model forward-only.

With no arguments it runs the embedded default: SmolLM2-135M on the offline ``mr`` task with MeZO
and prefix tuning, sized to finish in about 10 minutes on a 2-core CPU (docs/finetuning.md has the numbers).
Options come from defaults < ``--config FILE`` (TOML or YAML) < command-line flags.
"""

from __future__ import annotations

import argparse
import json
import sys

from zotune.cli._common import add_data_flags, run_guarded

# flag -> (TrainConfig field, type, help); every flag defaults to None = "not given"
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--model", "model", str, "model alias (zotune models), hub id or local folder [smollm2-135m]"),
    ("--task", "task", str, "task name (zotune tasks) [mr]"),
    ("--method", "method", str, "ZO method: {methods}, or several joined with + (e.g. kerzoo+pezo+dizo) [mezo]"),
    ("--peft", "peft", str, "full, lora or prefix [prefix]"),
    ("--steps", "steps", int, "optimizer steps"),
    ("--lr", "lr", float, "learning rate (default: per --peft)"),
    ("--eps", "eps", float, "perturbation scale (default: per --peft)"),
    ("--batch-size", "batch_size", int, "examples per step [16]"),
    ("--eval-every", "eval_every", int, "dev evaluation every N steps (0: only at the end)"),
    ("--seed", "seed", int, "seed for data, batches and directions [0]"),
    ("--out", "out", str, "run folder (default: runs/<task>-<model>-<peft>-<time>)"),
    ("--num-train", "num_train", int, "training examples [1000]"),
    ("--num-dev", "num_dev", int, "dev examples [200]"),
    ("--num-eval", "num_eval", int, "test examples [500]"),
    ("--max-length", "max_length", int, "max tokens per sequence [128]"),
    ("--objective", "objective", str, "auto, ce, lm, f1 or accuracy (f1/accuracy: non-differentiable)"),
    ("--dtype", "dtype", str, "float32 (default), bfloat16 or float16"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay [0]"),
    ("--n-queries", "n_queries", int, "random directions per step [the method's: 1; kerzoo 3]"),
    ("--eval-batch-size", "eval_batch_size", int, "evaluation batch size [32]"),
    ("--lora-r", "lora_r", int, "LoRA rank [8]"),
    ("--lora-alpha", "lora_alpha", int, "LoRA alpha [16]"),
    ("--prefix-tokens", "prefix_tokens", int, "prefix tokens [5]"),
    ("--max-nonfinite", "max_nonfinite", int, "stop after this many non-finite losses in a row [5]"),
    ("--max-new-tokens", "max_new_tokens", int, "generation length for QA tasks [50]"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--device", "device", str, "auto, cpu or cuda"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="fine-tune a language model with a ZO method (default: SmolLM2-135M on mr)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML or YAML file of options (flags override it)")
    from zotune.methods import available_methods

    for flag, dest, typ, help_text in _FLAGS:
        help_text = help_text.replace("{methods}", ", ".join(available_methods()))
        parser.add_argument(flag, dest=dest, type=typ, default=None, help=help_text)
    add_data_flags(parser)
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --out folder")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    parser.add_argument("--no-zero-shot", dest="zero_shot", action="store_false", default=None,
                        help="skip the zero-shot evaluation")
    parser.set_defaults(func=run)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict:
    from zotune.train.config import TrainConfig

    return {name: getattr(args, name) for name in TrainConfig.field_names() if getattr(args, name, None) is not None}


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from zotune.train.config import load_config_file, resolve_config
        from zotune.train.loop import TrainingDiverged, train

        file_values = load_config_file(args.config) if args.config else {}
        cfg = resolve_config(file_values, overrides_from_args(args))
        try:
            summary = train(cfg)
        except TrainingDiverged as exc:
            print(f"zotune train: error: {exc}", file=sys.stderr)
            return 1
        metric = summary["metric"]
        zs = summary.get("zero_shot", {}).get("test", {}).get(metric)
        ft = summary["final"]["test"][metric]
        print(json.dumps({"run_folder": summary["run_folder"], "metric": metric,
                          "zero_shot_test": zs, "fine_tuned_test": ft, "steps": summary["steps"],
                          "forward_passes": summary["forward_passes"],
                          "wall_seconds": round(summary["wall_seconds"], 1)}))
        return 0

    return run_guarded("train", body)
