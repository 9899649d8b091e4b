"""``zotune bench``: benchmarks that print ratios measured side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zotune.bench.experiments import Experiment


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

    run_parser = kinds.add_parser(
        "run", help="run an experiment file of benchmarks/ (cost, convergence or scale) and append its result(s)"
    )
    run_parser.add_argument("experiments", nargs="+", help="experiment file(s), e.g. benchmarks/cost/smollm2-full.toml")
    run_parser.add_argument("--part", choices=["grid", "final", "all"], default="all",
                            help="convergence: the learning-rate grid, the final seeds, or both (default)")
    run_parser.add_argument("--methods", nargs="+", default=None,
                            help="convergence: only these methods (to split a study across processes)")
    run_parser.add_argument("--seeds", nargs="+", type=int, default=None,
                            help="convergence: only these seeds, run seed by seed in this order (e.g. --seeds 1 2: "
                                 "every method's second seed before any third)")
    run_parser.add_argument("--memory-only", action="store_true",
                            help="cost: re-measure only the peak memory (safe beside other jobs) and append it")
    run_parser.add_argument("--no-memory", action="store_true",
                            help="cost: time only; the report keeps the newest memory measurement")
    run_parser.add_argument("--dry-run", action="store_true", help="list the runs still to do, run nothing")
    run_parser.set_defaults(func=_run_experiment)

    report_parser = kinds.add_parser("report", help="tables (markdown) and plots (PNG) of experiments' results")
    report_parser.add_argument("experiments", nargs="+", help="experiment files")
    report_parser.add_argument("--out", default=None, help="folder for the report (default: beside each results file)")
    report_parser.set_defaults(func=_report)

    cost_memory = kinds.add_parser("cost-memory", help="(internal) peak RSS of one cost-benchmark mode, in this process")
    cost_memory.add_argument("--config-json", required=True)
    cost_memory.add_argument("--mode", required=True)
    cost_memory.set_defaults(func=_run_cost_memory)

    scale_memory = kinds.add_parser("scale-memory", help="(internal) peak RSS of one scale-benchmark mode, in this process")
    scale_memory.add_argument("--config-json", required=True)
    scale_memory.add_argument("--mode", required=True)
    scale_memory.set_defaults(func=_run_scale_memory)

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


def _run_experiment(args: argparse.Namespace) -> int:
    from zotune.cli._common import run_guarded

    experiments: list[Experiment] = []

    def check() -> int:
        # Every file, and every study's plan (e.g. `--part final` before the grid is done, a method the study
        # lacks), is checked before any run starts: a mistake in the second file must not surface hours later.
        experiments.extend(_checked_experiment(path, args) for path in args.experiments)
        return 0

    status = run_guarded("bench run", check)
    if status != 0:
        return status
    return _run_checked(experiments, args)


def _checked_experiment(path: str, args: argparse.Namespace) -> "Experiment":
    from zotune.bench.experiments import load_experiment, read_results

    exp = load_experiment(path)
    if exp.kind == "convergence":
        from zotune.bench.convergence import planned_runs

        planned_runs(exp.config, read_results(exp.results), args.part, args.methods, args.seeds)  # raises ValueError
    return exp


def _run_checked(experiments: list["Experiment"], args: argparse.Namespace) -> int:
    from zotune.train.runner import RunInterrupted

    try:
        for exp in experiments:
            _run_one_experiment(exp, args)
    except RunInterrupted as exc:
        # a study run stopped by Ctrl-C / SIGTERM: it is not in the results, and the next `bench run` does it
        print(f"zotune bench run: {exc}; the unfinished run is not recorded and runs again next time",
              file=sys.stderr)
        return exc.exit_code
    return 0


def _run_one_experiment(exp: "Experiment", args: argparse.Namespace) -> None:
    import sys

    from zotune.bench.experiments import append_result, read_results

    if exp.kind == "cost":
        if args.dry_run:
            print(f"{exp.path}: one cost run -> {exp.results}")
            return
        from zotune.bench.cost import run_cost, run_cost_memory

        if args.memory_only:
            result = run_cost_memory(exp.config)
            append_result(exp.results, {"experiment": exp.name, **result})
            print(json.dumps(result["memory_ratio_to_inference"], indent=1))
            return
        if args.no_memory:
            exp.config.memory = False
        result = run_cost(exp.config)
        append_result(exp.results, {"experiment": exp.name, **result})
        print(json.dumps(result["rows"], indent=1))
        print(f"appended to {exp.results}", file=sys.stderr)
        return
    if exp.kind == "scale":
        if args.dry_run:
            print(f"{exp.path}: one scale run -> {exp.results}")
            return
        from zotune.bench.scale import run_scale

        result = run_scale(exp.config)
        append_result(exp.results, {"experiment": exp.name, **result})
        print(json.dumps(result, indent=1))
        return
    from zotune.bench.convergence import planned_runs, run_study

    if args.dry_run:
        todo = planned_runs(exp.config, read_results(exp.results), args.part, args.methods, args.seeds)
        for key in todo:
            print(f"{key.method} lr={key.lr:g} seed={key.seed}")
        print(f"{len(todo)} run(s) to do ({args.part}); results in {exp.results}", file=sys.stderr)
        return
    ran = run_study(exp, args.part, args.methods, seeds=args.seeds)
    print(f"{ran} run(s) appended to {exp.results}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zotune.bench.experiments import load_experiment
    from zotune.bench.report import write_report

    for path in args.experiments:
        exp = load_experiment(path)
        for written in write_report(exp, Path(args.out) if args.out else None):
            print(written)
    return 0


def _run_cost_memory(args: argparse.Namespace) -> int:
    from zotune.bench.cost import CostConfig, measure_memory_mode

    print(json.dumps(measure_memory_mode(CostConfig(**json.loads(args.config_json)), args.mode)))
    return 0


def _run_scale_memory(args: argparse.Namespace) -> int:
    from zotune.bench.scale import ScaleConfig, measure_scale_mode

    print(json.dumps(measure_scale_mode(ScaleConfig(**json.loads(args.config_json)), args.mode)))
    return 0
