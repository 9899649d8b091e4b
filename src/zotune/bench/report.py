"""Markdown tables and PNG plots of experiment results (``zotune bench report``).

Everything here is read from the results files; nothing is typed in by hand, so a table can always be
traced back to the command that appended its lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zotune.bench.experiments import Experiment, read_results

__all__ = ["write_report", "cost_table", "convergence_tables", "verdict_table", "per_seed_table", "plot_convergence"]


def _fmt_int(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def cost_table(record: dict[str, Any], memory: dict[str, Any] | None = None) -> str:
    """One cost run as a table, rows in the order they were timed; ``memory``, a later memory measurement
    (another run's, or a ``--memory-only`` line), replaces the run's own memory columns."""
    cfg = record["config"]
    if memory is not None:
        ratios = memory.get("memory_ratio_to_inference") or {
            name: row["memory_ratio_to_inference"] for name, row in memory["rows"].items() if "memory_ratio_to_inference" in row}
        record = {**record, "peak_rss_mb": memory["peak_rss_mb"], "memory_wall_seconds": memory["wall_seconds"],
                  "rows": {name: {**row, **({"memory_ratio_to_inference": ratios[name]} if name in ratios else {})}
                           for name, row in record["rows"].items()}}
    rows = record["rows"]
    floor = rows["forward x2"]["seconds_per_step"]
    lines = [
        f"**{cfg['model']}, {cfg['peft']}** ({record['trainable_params']:,} trainable parameters, batch {cfg['batch']} x "
        f"{cfg['length']} tokens, full-vocabulary loss, {record['threads']} threads, median of {cfg['rounds']} interleaved "
        f"rounds; two forward passes = {floor:.3f} s"
        + (f"; CPU {record['cpu_model']}, {record['cpu_capability']}" if "cpu_capability" in record else "")
        + ")",
        "",
        "| variant | s / step | ÷ two forwards | forward passes / step | random numbers / step | optimizer state MiB | peak memory ÷ inference |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [name for name in ("forward x2", "reference", *cfg["methods"]) if name in rows]  # the file's keys are sorted
    for name in order:
        row = rows[name]
        memory = row.get("memory_ratio_to_inference")
        seconds = f"{row['seconds_per_step']:.3f}"
        if "search_cycle_seconds" in row:
            seconds += f" ({row['seconds_per_plain_step']:.3f} + {row['search_cycle_seconds']:.2f} / {row['interval']})"
        lines.append(
            f"| {name} | {seconds} | {row['ratio_to_two_forwards']:.3f} | {row['forward_passes_per_step']:g} | "
            f"{_fmt_int(row['random_numbers_per_step'])} | {_state(row)} | "
            f"{'1' if name == 'forward x2' else ('–' if memory is None else f'{memory:.3f}')} |"
        )
    if "peak_rss_mb" in record:
        peaks = record["peak_rss_mb"]
        lines += ["", "Peak RSS (MiB): " + ", ".join(f"{k} {peaks[k]:,.0f}" for k in ["infer", *order[1:]] if k in peaks)
                  + f". Whole experiment: {record['wall_seconds']:.0f} s"
                  + (f" (memory measured in a separate run: {record['memory_wall_seconds']:.0f} s)." if "memory_wall_seconds" in record else ".")]
    return "\n".join(lines)


def _state(row: dict[str, Any]) -> str:
    """Parameter-sized optimizer state, with the buffers that hold it (results older than the column: –)."""
    if "state_mb" not in row:
        return "–"
    buffers = row.get("state_buffers") or []
    return f"{row['state_mb']:,.1f}" + (f" ({', '.join(buffers)})" if buffers else "")


def _pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _ratio(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


def _ci(mean: float | None, half: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f}" + ("" if half is None else f" ± {half:.3f}")


def _signed(value: float) -> str:
    """A difference with its sign: three significant digits, whole numbers with separators from 100 on."""
    return f"{value:+,.0f}" if abs(value) >= 100 else f"{value:+.3g}"


def _interval(difference: float, low: float, high: float) -> str:
    """A difference with its interval; a zero-width one says so, as it means the seeds did not spread, not
    that the difference is exact (LoRA on `bbc`: KerZOO reached MeZO's final dev at 792 forward passes in every
    seed, and every MeZO seed counts 2,000, two of them censored at the budget)."""
    text = f"{_signed(difference)} ({_signed(low)} to {_signed(high)})"
    return text + (" [zero width: every seed gave the same value]" if low == high else "")


def verdict_table(summary: dict[str, Any]) -> str:
    """The claims under test, each with its verdict and the 95% interval it rests on."""
    lines = ["| method | claim | source | verdict | difference vs MeZO (95% interval) |", "|---|---|---|---|---|"]
    for claim in summary["claims"]:
        if "difference" in claim:
            # the interval that decides comes first; the other is shown beside it
            welch = _interval(claim["difference"], claim["low"], claim["high"])
            pair = claim.get("paired")
            paired = pair and (f"paired by seed ({pair['pairs']} seeds): "
                               f"{_interval(pair['difference'], pair['low'], pair['high'])}")
            if claim.get("decided_by") == "paired":
                evidence = (f"{claim['quantity']}: {paired or 'paired by seed: fewer than two seeds both have'} "
                            f"(decides); Welch: {welch}")
            else:
                evidence = f"{claim['quantity']}: {welch}" + (f"; {paired}" if paired else "")
        else:
            evidence = claim.get("why", "–")
        lines.append(f"| {claim['method']} | {claim['claim']} | {claim.get('source', '–')} | **{claim['verdict']}** | {evidence} |")
    return "\n".join(lines)


def convergence_tables(summary: dict[str, Any], cfg: Any, records: list[dict[str, Any]]) -> str:
    from zotune.bench.convergence import RunKey, loss_diverged

    target = summary["target_dev"]
    target_loss = summary.get("target_loss")
    zs = summary["zero_shot"]
    budget = ("equal forward passes (MeZO's 2 x steps)" if getattr(cfg, "budget", "steps") == "forward_passes"
              else "equal steps")
    lines = [
        f"**{cfg.task}**, {cfg.model}, {cfg.peft}: {cfg.steps} MeZO steps of batch {cfg.batch_size}, {budget}, dev "
        f"{cfg.num_dev} / test {cfg.num_eval} examples, seeds {cfg.seeds}, {cfg.steps // cfg.eval_every} dev evaluations "
        f"a run. Target = MeZO's final dev {'–' if target is None else format(target, '.3f')}, MeZO's final training "
        f"loss {'–' if target_loss is None else format(target_loss, '.4f')}; zero-shot test {_pm(zs['test_mean'], zs['test_std'])}.",
        "",
    ]
    if summary.get("claims"):
        lines += [verdict_table(summary), ""]
    lines += [
        "| method | lr (kept) | steps | forward passes to target dev | ÷ MeZO | per-seed steps to it | forward passes to "
        "MeZO's final loss | test (mean ± 95% CI) | final loss (± 95% CI) | forward passes / step | random numbers / step "
        "| peak memory MiB | wall s / run (per CPU family/model where they differ) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, info in summary["methods"].items():
        reach = info["reach"]
        per_seed = ", ".join("–" if s is None else str(s) for s in reach.get("per_seed_steps", []))
        lr = "–" if info["lr"] is None else f"{info['lr']:g}" + (" (grid edge)" if info.get("lr_at_edge") else "")
        steps = cfg.steps_for(method) if hasattr(cfg, "steps_for") else cfg.steps
        test = _ci(info["test_mean"], info.get("test_ci95")) + (f" ({info['diverged']} diverged)" if info["diverged"] else "")
        passes = "–" if info["forward_passes_per_step"] is None else f"{info['forward_passes_per_step']:.2f}"
        by_cpu = info.get("wall_seconds_by_cpu") or {}  # runs on several CPUs: a mean each, named by CPU
        wall = ", ".join(f"{seconds:.0f}" + (f" ({cpu})" if len(by_cpu) > 1 else "") for cpu, seconds in by_cpu.items()) or "–"
        loss_reach = (info.get("reach_loss") or {}).get("forward_passes")
        if not info["runs"]:  # nothing finished at the kept lr yet (or no lr kept)
            lines.append(f"| {method} | {lr} | {steps} | " + " | ".join(["–"] * 10) + " |")
            continue
        lines.append(
            f"| {method} | {lr} | {steps} | {'not reached' if reach['forward_passes'] is None else _fmt_int(reach['forward_passes'])} | "
            f"{_ratio(reach.get('forward_pass_ratio'))} | {per_seed} | "
            f"{'–' if target_loss is None else 'not reached' if loss_reach is None else _fmt_int(loss_reach)} | {test} | "
            f"{_ci(info.get('final_loss_mean'), info.get('final_loss_ci95'))} | {passes} | "
            f"{_fmt_int(info.get('random_numbers_per_step'))} | {_fmt_int(info.get('peak_memory_mb'))}"
            f"{'' if info.get('peak_memory_own', True) else ' †'} | {wall} |"
        )
    if any(info["runs"] and not info.get("peak_memory_own", True) for info in summary["methods"].values()):
        lines += ["", "† the peak of the runner's process up to that run, not the run's own: an upper bound (these "
                  "runs were made before each run's peak was counted from its start)."]
    lines += ["", per_seed_table(summary)]
    # the learning-rate grid, for the record
    by_key = {RunKey.of(r): r for r in records}
    grids = {m: summary["methods"][m].get("grid") or sorted(float(x) for x in cfg.lr_grid[m]) for m in cfg.methods}
    width = max(len(g) for g in grids.values())
    lines += ["", f"Learning-rate grid (best dev metric, mean over grid seeds {cfg.grid_seeds}; * = kept):", "",
              "| method | " + " | ".join("lr" for _ in range(width)) + " |", "|---|" + "---|" * width]
    for method in cfg.methods:
        cells = []
        for lr in grids[method]:
            runs = [by_key.get(RunKey(method, float(lr), s)) for s in cfg.grid_seeds]
            if any(r is None for r in runs):
                cells.append(f"{lr:g}: not run")
                continue
            values = [r["best_dev"] for r in runs if r["status"] == "completed"]
            mark = "*" if summary["methods"][method]["lr"] == float(lr) else ""
            if any(r["status"] == "completed" and loss_diverged(cfg, r) for r in runs):
                mark += " (loss diverged)"  # ran to its end before the rule was set: scored as diverged
            cells.append(f"{lr:g}: " + (f"{sum(values) / len(values):.3f}{mark}" if len(values) == len(runs) else "diverged"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(summary: dict[str, Any]) -> str:
    """Each completed run at a method's kept lr: when it first reached MeZO's final dev metric, in forward passes,
    steps and wall seconds from the run's start (its dev evaluations included), and on which CPU, since wall
    times of different CPUs are not comparable."""
    from zotune.bench.convergence import first_reaching

    target = summary["target_dev"]
    lines = [f"Per seed, at the kept lr: the first evaluation at or above MeZO's final dev metric "
             f"({'–' if target is None else format(target, '.3f')}); wall seconds from the run's start, dev "
             "evaluations included, comparable only within one CPU (family/model):", "",
             "| method | seed | forward passes to target dev | step | wall s to it | wall s, whole run | best dev | test | CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, info in summary["methods"].items():
        for run in info["runs"]:
            hit = first_reaching(run["curve"], target) if target is not None else None
            reached = ("not reached", "–", "–") if hit is None else (
                _fmt_int(hit["forward_passes"]), str(hit["step"]), f"{hit['wall_time']:.0f}")
            lines.append(f"| {method} | {run['seed']} | {' | '.join(reached)} | {run['wall_seconds']:.0f} | "
                         f"{'–' if run.get('best_dev') is None else format(run['best_dev'], '.3f')} | "
                         f"{'–' if run.get('test') is None else format(run['test'], '.3f')} | "
                         f"{run.get('cpu_family_model', '?')} {run.get('cpu_capability', '')}".rstrip() + " |")
    return "\n".join(lines)


def plot_convergence(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Dev metric against forward passes and against steps, and the training loss against forward passes:
    seed mean, with the min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_loss = any(info.get("loss_curve") for info in summary["methods"].values())
    fig, axes = plt.subplots(1, 3 if has_loss else 2, figsize=(16 if has_loss else 11, 4.2))
    for method, info in summary["methods"].items():
        curve = info["curve"]
        if not curve:
            continue
        label = f"{method} (lr {info['lr']:g}, n={len(info['runs'])})"
        for axis, x_key in zip(axes[:2], ("forward_passes", "step")):
            xs = [p[x_key] for p in curve]
            line, = axis.plot(xs, [p["dev"] for p in curve], marker="o", markersize=3, label=label)
            axis.fill_between(xs, [p["dev_min"] for p in curve], [p["dev_max"] for p in curve], color=line.get_color(), alpha=0.15)
        if has_loss and info.get("loss_curve"):
            loss = info["loss_curve"]
            xs = [p["forward_passes"] for p in loss]
            axes[2].plot(xs, [p["loss"] for p in loss], color=line.get_color(), linewidth=1)
            axes[2].fill_between(xs, [p["loss_min"] for p in loss], [p["loss_max"] for p in loss], color=line.get_color(), alpha=0.15)
    for axis, xlabel in zip(axes[:2], ("forward passes", "steps")):
        if summary["target_dev"] is not None:
            axis.axhline(summary["target_dev"], color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("dev metric (mean over seeds; band: min-max)")
    axes[1].legend(fontsize=7, loc="lower right")
    if has_loss:
        if summary.get("target_loss") is not None:
            axes[2].axhline(summary["target_loss"], color="grey", linestyle="--", linewidth=1)
        axes[2].set_xlabel("forward passes")
        axes[2].set_ylabel("training loss (window means)")
        axes[2].grid(alpha=0.3)
    fig.suptitle(title + " (dashed: MeZO's final value)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(exp: Experiment, out: Path | None = None) -> list[Path]:
    """Write ``<stem>.md`` (and ``<stem>.png`` for a convergence study) beside the results file."""
    records = read_results(exp.results)
    if not records:
        raise ValueError(f"{exp.results} has no results yet: run `zotune bench run {exp.path}` first")
    folder = out or exp.results.parent
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if exp.kind == "cost":
        timed = [i for i, r in enumerate(records) if r.get("kind") == "cost"]
        measured = [i for i, r in enumerate(records) if "peak_rss_mb" in r]
        if not timed:
            raise ValueError(f"{exp.results} has no timed run yet: run `zotune bench run {exp.path}`")
        # the newest timing and the newest memory measurement (a run of both, or a --memory-only line)
        newer_memory = records[measured[-1]] if measured and measured[-1] != timed[-1] else None
        text = cost_table(records[timed[-1]], newer_memory)
    else:
        from zotune.bench.convergence import summarize

        summary = summarize(exp.config, records)
        text = convergence_tables(summary, exp.config, records)
        written.append(plot_convergence(summary, folder / f"{exp.name}.png",
                                        f"{exp.config.task} / {exp.config.model} / {exp.config.peft}"))
    md = folder / f"{exp.name}.md"
    md.write_text(f"<!-- made by: zotune bench report {exp.path} -->\n{text}\n", encoding="utf-8")
    return [md, *written]
