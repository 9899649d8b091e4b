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
import os
import subprocess
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
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data parallelism: run N ranks on this machine with torchrun (gloo on CPUs, NCCL on "
                             "GPUs); each evaluates its shard of every batch and the ranks exchange only the "
                             "probe losses [1]")
    add_config_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from zotune.train.checkpoint import CheckpointError
        from zotune.train.config import load_config_file, resolve_config
        from zotune.train.loop import RunInterrupted, TrainingDiverged, resume, train

        flags = given_flags(args)
        if args.nproc != 1:
            return _launch_ranks(args, flags)
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
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # rank 0 reports for a data-parallel job
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


def _launch_ranks(args: argparse.Namespace, flags: dict[str, object]) -> int:
    """``--nproc N``: check everything that can be checked without the model, then run the same command
    (without ``--nproc``) under torchrun on N local ranks and return its exit status."""
    from zotune.train.config import load_config_file, resolve_config
    from zotune.train.distributed import launched_by_torchrun, torchrun_command
    from zotune.train.loop import check_job, check_resume

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ValueError("--nproc launches torchrun itself: drop it when you run under torchrun")
    if args.resume:
        refused = sorted(set(flags) - _RESUME_ALLOWED) + (["config"] if args.config else [])
        if refused:
            raise ValueError(f"--resume continues a run with its own config; drop --{refused[0].replace('_', '-')}")
        check_resume(args.resume)
    else:
        cfg = resolve_config(load_config_file(args.config) if args.config else {}, flags)
        if cfg.model.device_map:
            raise ValueError("--device-map spreads one model over several devices and --nproc gives each rank its "
                             "own device: use one or the other")
        check_job(cfg)
    argv = _without_nproc(list(getattr(args, "argv", None) or sys.argv[1:]))
    return subprocess.run(torchrun_command(args.nproc, argv), check=False).returncode


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` with its ``--nproc N`` / ``--nproc=N`` removed."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out
