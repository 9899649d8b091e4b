"""Benchmark experiments: files, resumable convergence studies, their analysis and reports, the cost runner."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from zotune.bench.convergence import (
    ConvergenceConfig,
    RunKey,
    ci95,
    choose_lr,
    difference_ci95,
    final_loss,
    first_reaching,
    forward_passes_per_step,
    loss_curve,
    lr_grid,
    mean_curve,
    paired_difference_ci95,
    planned_runs,
    run_study,
    summarize,
    verdict,
)
from zotune.bench.cost import CostConfig, run_cost
from zotune.bench.experiments import append_result, load_experiment, read_results
from zotune.bench.report import cost_table, verdict_table, write_report

FIX = Path(__file__).parent / "fixtures"


def study(**kw) -> ConvergenceConfig:
    base = dict(methods=["mezo", "pezo"], lr_grid={"mezo": [0.1, 0.2], "pezo": [0.1, 0.2]}, grid_seeds=[0],
                seeds=[0, 1], steps=40, eval_every=20)
    return ConvergenceConfig(**{**base, **kw})


def record(method: str, lr: float, seed: int, devs: list[float], test: float = 0.5, status: str = "completed",
           passes_per_step: float = 2.0, zero: float | None = None) -> dict:
    curve = [{"step": 20 * (i + 1), "forward_passes": passes_per_step * 20 * (i + 1), "dev": d, "wall_time": 1.0}
             for i, d in enumerate(devs)]
    out = {"method": method, "lr": lr, "seed": seed, "status": status, "metric": "accuracy", "curve": curve,
           "best_dev": max(devs) if status == "completed" else None, "best_step": 20, "test": test,
           "forward_passes": passes_per_step * 40, "wall_seconds": 3.0}
    if zero is not None:
        out["zero_shot"] = {"dev": zero, "test": zero}
    return out


# --- experiment files and results files ---------------------------------------------------------------


def test_experiment_file_is_validated(tmp_path):
    good = tmp_path / "mr.toml"
    good.write_text('kind = "convergence"\ntask = "mr"\nmethods = ["mezo"]\n[lr_grid]\nmezo = [0.01]\n')
    exp = load_experiment(good)
    assert exp.kind == "convergence" and exp.results == tmp_path / "results" / "mr.jsonl"
    assert exp.config.lr_grid == {"mezo": [0.01]}
    for text, message in [
        ('task = "mr"\n', "missing 'kind'"),
        ('kind = "speed"\n', "unknown experiment kind"),
        ('kind = "cost"\nbatchsize = 3\n', "unknown key"),
        ('kind = "convergence"\nmethods = ["mezo"]\n', "lr_grid has no learning rates for mezo"),
        ('kind = "cost"\nbatch = 0\n', "batch must be a positive integer"),
        ('kind = "convergence"\nmethods = ["mezo"]\nverdict_interval = "t"\n[lr_grid]\nmezo = [0.01]\n',
         "verdict_interval must be one of welch, paired"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_experiment(bad)


def test_results_append_and_read_back(tmp_path):
    path = tmp_path / "r" / "x.jsonl"
    assert read_results(path) == []
    append_result(path, {"a": 1})
    append_result(path, {"a": 2})
    assert [r["a"] for r in read_results(path)] == [1, 2]
    with open(path, "a") as handle:
        handle.write('{"a": 3')  # a torn line
    with pytest.raises(ValueError, match="x.jsonl:3"):
        read_results(path)


# --- the protocol: grid, kept learning rate, final runs ---------------------------------------------------


def test_choose_lr_takes_the_best_mean_dev_and_counts_divergence_as_worst():
    cfg = study()
    records = [record("mezo", 0.1, 0, [0.6, 0.7]), record("mezo", 0.2, 0, [0.8, 0.75])]
    assert choose_lr(cfg, records, "mezo") == 0.2
    assert choose_lr(cfg, records, "pezo") is None  # grid not run yet
    diverged = [record("mezo", 0.1, 0, [0.6, 0.7]), record("mezo", 0.2, 0, [0.9], status="diverged")]
    assert choose_lr(cfg, diverged, "mezo") == 0.1
    tie = [record("mezo", 0.1, 0, [0.8, 0.7]), record("mezo", 0.2, 0, [0.8, 0.7])]
    assert choose_lr(cfg, tie, "mezo") == 0.1  # same best and final dev: the smaller lr
    tie_final = [record("mezo", 0.1, 0, [0.8, 0.6]), record("mezo", 0.2, 0, [0.8, 0.7])]
    assert choose_lr(cfg, tie_final, "mezo") == 0.2  # same best dev: the higher final dev


def test_planned_runs_reuse_grid_runs_and_skip_finished_ones():
    cfg = study()
    assert planned_runs(cfg, [], "grid") == [RunKey("mezo", 0.1, 0), RunKey("mezo", 0.2, 0), RunKey("pezo", 0.1, 0), RunKey("pezo", 0.2, 0)]
    assert planned_runs(cfg, [], "all") == planned_runs(cfg, [], "grid")  # finals wait for the grid
    with pytest.raises(ValueError, match="grid of mezo is not finished"):
        planned_runs(cfg, [], "final")
    with pytest.raises(ValueError, match="not in this study"):
        planned_runs(cfg, [], "grid", methods=["dizo"])
    grid = [record("mezo", 0.1, 0, [0.6, 0.7]), record("mezo", 0.2, 0, [0.8, 0.75])]
    assert planned_runs(cfg, grid, "all", methods=["mezo"]) == [RunKey("mezo", 0.2, 1)]  # seed 0 is the grid's run
    assert planned_runs(cfg, grid + [record("mezo", 0.2, 1, [0.7, 0.7])], "all", methods=["mezo"]) == []


def test_seeds_filter_and_order_the_plan():
    """``--seeds 2 1``: only those seeds, every method's seed 2 before any seed 1 (a second seed for each claim
    soonest), the methods in the file's order within a seed."""
    cfg = study(seeds=[0, 1, 2])
    grid = [record("mezo", 0.1, 0, [0.6, 0.7]), record("mezo", 0.2, 0, [0.8, 0.75]),
            record("pezo", 0.1, 0, [0.8, 0.8]), record("pezo", 0.2, 0, [0.6, 0.6])]
    assert planned_runs(cfg, grid, "final", seeds=[2, 1]) == [
        RunKey("mezo", 0.2, 2), RunKey("pezo", 0.1, 2), RunKey("mezo", 0.2, 1), RunKey("pezo", 0.1, 1)]
    assert planned_runs(cfg, grid, "final") == [
        RunKey("mezo", 0.2, 1), RunKey("mezo", 0.2, 2), RunKey("pezo", 0.1, 1), RunKey("pezo", 0.1, 2)]
    assert planned_runs(cfg, grid, "final", methods=["pezo"], seeds=[1]) == [RunKey("pezo", 0.1, 1)]
    with pytest.raises(ValueError, match="seeds not in this study: 3; it has 0, 1, 2"):
        planned_runs(cfg, grid, "final", seeds=[1, 3])


# --- analysis ---------------------------------------------------------------------------------------------


def test_mean_curve_and_first_reaching():
    runs = [record("mezo", 0.1, 0, [0.5, 0.7]), record("mezo", 0.1, 1, [0.7, 0.9])]
    curve = mean_curve(runs)
    assert [p["step"] for p in curve] == [20, 40]
    assert curve[1]["dev"] == pytest.approx(0.8) and curve[1]["dev_min"] == 0.7 and curve[1]["dev_max"] == 0.9
    assert curve[0]["dev_std"] == pytest.approx(math.sqrt(0.02))
    assert first_reaching(curve, 0.6)["step"] == 20
    assert first_reaching(curve, 0.8)["step"] == 40  # equal counts as reached
    assert first_reaching(curve, 0.81) is None


def test_summarize_measures_steps_and_passes_to_mezo_final_dev():
    cfg = study(methods=["mezo", "dizo"], lr_grid={"mezo": [0.1], "dizo": [0.1]})
    records = [
        record("mezo", 0.1, 0, [0.6, 0.7], test=0.70, zero=0.5),
        record("mezo", 0.1, 1, [0.6, 0.8], test=0.80, zero=0.55),
        record("dizo", 0.1, 0, [0.8, 0.8], test=0.75, passes_per_step=2.4),
        record("dizo", 0.1, 1, [0.7, 0.8], test=0.85, passes_per_step=2.4),
    ]
    summary = summarize(cfg, records)
    assert summary["target_dev"] == pytest.approx(0.75)
    mezo, dizo = summary["methods"]["mezo"], summary["methods"]["dizo"]
    assert mezo["reach"]["step"] == 40 and dizo["reach"]["step"] == 20
    assert dizo["reach"]["step_ratio"] == pytest.approx(0.5)
    assert dizo["reach"]["forward_pass_ratio"] == pytest.approx(48 / 80)
    assert dizo["reach"]["per_seed_steps"] == [20, 40] and mezo["reach"]["per_seed_steps"] == [None, 40]
    assert mezo["test_mean"] == pytest.approx(0.75) and mezo["test_std"] == pytest.approx(math.sqrt(0.005))
    assert mezo["curve"][0] == {"step": 0, "dev": 0.525, "dev_min": 0.5, "dev_max": 0.55,
                                "dev_std": pytest.approx(math.sqrt(0.00125)), "forward_passes": 0}
    assert summary["zero_shot"]["test_mean"] == pytest.approx(0.525)
    assert dizo["forward_passes_per_step"] == pytest.approx(2.4)


def test_a_grid_whose_edge_wins_is_extended_until_the_best_is_inside():
    cfg = study(methods=["mezo"], lr_grid={"mezo": [0.1, 0.3]}, extend_grid=2)
    grid = [record("mezo", 0.1, 0, [0.6]), record("mezo", 0.3, 0, [0.7])]
    assert lr_grid(cfg, grid, "mezo") == ([0.1, 0.3, 0.9], False)  # the upper edge won: one more, 3x higher
    assert planned_runs(cfg, grid, "all") == [RunKey("mezo", 0.9, 0)]  # no final runs before the grid is done
    worse = grid + [record("mezo", 0.9, 0, [0.65])]
    assert lr_grid(cfg, worse, "mezo") == ([0.1, 0.3, 0.9], True) and choose_lr(cfg, worse, "mezo") == 0.3
    better = grid + [record("mezo", 0.9, 0, [0.8]), record("mezo", 2.7, 0, [0.9])]
    assert lr_grid(cfg, better, "mezo") == ([0.1, 0.3, 0.9, 2.7], True)  # two points added: no more
    assert choose_lr(cfg, better, "mezo") == 2.7
    assert summarize(cfg, better)["methods"]["mezo"]["lr_at_edge"] is True
    lower = [record("mezo", 0.1, 0, [0.8]), record("mezo", 0.3, 0, [0.7])]
    assert lr_grid(cfg, lower, "mezo")[0] == [0.0333, 0.1, 0.3]
    assert lr_grid(study(methods=["mezo"], lr_grid={"mezo": [0.1, 0.3]}), grid, "mezo") == ([0.1, 0.3], True)


def test_a_forward_pass_budget_gives_each_method_mezos_passes():
    assert forward_passes_per_step("mezo") == 2 and forward_passes_per_step("kerzoo") == 6
    assert forward_passes_per_step("dizo") == pytest.approx(2.4)  # 10 probe pairs every 50 steps
    cfg = study(methods=["mezo", "kerzoo", "dizo"], lr_grid={m: [0.1] for m in ("mezo", "kerzoo", "dizo")},
                steps=60, eval_every=20, budget="forward_passes")
    assert [cfg.steps_for(m) for m in ("mezo", "kerzoo", "dizo")] == [60, 21, 51]  # 120 passes: 126 and 122.4
    assert [cfg.eval_every_for(m) for m in ("mezo", "kerzoo", "dizo")] == [20, 7, 17]  # 3 evaluations each
    assert study(steps=60, eval_every=20).steps_for("kerzoo") == 60
    with pytest.raises(ValueError, match="budget"):
        study(budget="hours")


def test_forward_passes_per_step_are_counted_over_the_methods_own_steps():
    """Under a forward-pass budget KerZOO runs 21 steps where MeZO runs 60: its six passes a step are
    126 / 21, not 126 / 60."""
    cfg = study(methods=["mezo", "kerzoo"], lr_grid={"mezo": [0.1], "kerzoo": [0.1]}, steps=60, eval_every=20,
                budget="forward_passes")
    kerzoo = [{"method": "kerzoo", "lr": 0.1, "seed": s, "status": "completed", "metric": "accuracy", "steps": 21,
               "curve": [{"step": k, "forward_passes": 6 * k, "dev": 0.6, "wall_time": 1.0} for k in (7, 14, 21)],
               "best_dev": 0.6, "best_step": 21, "test": 0.6, "forward_passes": 126, "wall_seconds": 3.0}
              for s in (0, 1)]
    mezo = [{**record("mezo", 0.1, s, [0.6, 0.6, 0.6]), "steps": 60, "forward_passes": 120} for s in (0, 1)]
    methods = summarize(cfg, mezo + kerzoo)["methods"]
    assert methods["kerzoo"]["forward_passes_per_step"] == pytest.approx(6.0)
    assert methods["mezo"]["forward_passes_per_step"] == pytest.approx(2.0)


def test_peak_memory_prefers_the_runs_own_peak_and_marks_a_process_peak(tmp_path):
    """Old lines hold the runner process's peak so far (an upper bound); a run measured from its own start
    replaces them, and the report marks a method that has only the old kind."""
    cfg = study(methods=["mezo", "pezo"], lr_grid={"mezo": [0.1], "pezo": [0.1]})
    records = [{**record("mezo", 0.1, 0, [0.6, 0.7]), "peak_memory_mb": 2400.0},
               {**record("mezo", 0.1, 1, [0.6, 0.7]), "peak_memory_mb": 1500.0, "peak_memory_scope": "run"},
               {**record("pezo", 0.1, 0, [0.6, 0.7]), "peak_memory_mb": 1800.0},
               {**record("pezo", 0.1, 1, [0.6, 0.7]), "peak_memory_mb": 1900.0}]
    methods = summarize(cfg, records)["methods"]
    assert methods["mezo"]["peak_memory_mb"] == 1500.0 and methods["mezo"]["peak_memory_own"] is True
    assert methods["pezo"]["peak_memory_mb"] == 1850.0 and methods["pezo"]["peak_memory_own"] is False
    from zotune.bench.report import convergence_tables

    table = convergence_tables(summarize(cfg, records), cfg, records)
    rows: dict[str, str] = {}
    for line in table.splitlines():  # the first row of each method: the results table's (the grid's comes later)
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "| 1,850 † |" in rows["pezo"] and "| 1,500 |" in rows["mezo"] and "† the peak of the runner" in table
    # wall times of two CPUs are shown apart, never averaged together
    records[1] = {**records[1], "cpu_family_model": "25/17", "wall_seconds": 5.0}
    records[0] = {**records[0], "cpu_family_model": "23/49"}
    table = convergence_tables(summarize(cfg, records), cfg, records)
    mezo_row = next(line for line in table.splitlines() if line.startswith("| mezo |"))
    assert mezo_row.endswith("| 3 (23/49), 5 (25/17) |"), mezo_row


def test_a_labelled_method_runs_its_zotune_method_with_its_own_options(tmp_path):
    from zotune.bench.convergence import _train_config

    cfg = study(methods=["pezo", "pezo@pre-generation"], lr_grid={"pezo": [0.1], "pezo@pre-generation": [0.1]},
                method_options={"pezo@pre-generation": {"mode": "pre-generation"}})
    train = _train_config(cfg, RunKey("pezo@pre-generation", 0.1, 0), tmp_path / "run", zero_shot=False)
    assert train.method.name == "pezo" and train.method.options == {"mode": "pre-generation"}
    assert _train_config(cfg, RunKey("pezo", 0.1, 0), tmp_path / "run", zero_shot=False).method.options == {}
    with pytest.raises(ValueError, match="unknown method"):
        study(methods=["mezo@x", "nosuch@y"], lr_grid={"mezo@x": [0.1], "nosuch@y": [0.1]})


def test_runs_of_another_length_are_neither_reused_nor_analysed():
    """A study file whose ``steps`` changed after some runs: those runs are planned again, not mixed in."""
    cfg = study(methods=["mezo"], lr_grid={"mezo": [0.1]}, seeds=[0])
    old = {**record("mezo", 0.1, 0, [0.6, 0.7]), "steps": 20}
    assert planned_runs(cfg, [old], "all") == [RunKey("mezo", 0.1, 0)]
    assert summarize(cfg, [old])["methods"]["mezo"]["runs"] == []
    same = {**record("mezo", 0.1, 0, [0.6, 0.7]), "steps": 40}
    legacy = record("mezo", 0.1, 0, [0.6, 0.7])  # made before runs recorded their steps: kept
    assert planned_runs(cfg, [same], "all") == [] and planned_runs(cfg, [legacy], "all") == []


def test_loss_curve_final_loss_and_intervals():
    metrics = [{"step": 0, "forward_passes": 0}] + [
        {"step": i, "loss": float(10 - i) if i != 3 else float("nan"), "forward_passes": 2 * i} for i in range(1, 11)]
    curve = loss_curve(metrics, points=5)
    assert [p["step"] for p in curve] == [2, 4, 6, 8, 10] and curve[1]["loss"] == 6.0  # the nan left out
    assert final_loss({"loss_curve": curve}) == pytest.approx(0.5)  # the last 10%: one point
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3))
    assert ci95([1.0]) is None
    diff, low, high = difference_ci95([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert diff == pytest.approx(1.0) and low < 0 < high


def test_verdicts_follow_the_intervals():
    def info(tests, passes=None):
        return {"tests": tests, "reach": {"forward_passes": None, "per_seed_forward_passes": passes or []},
                "budget_forward_passes": 1000}

    mezo = info([0.80, 0.805, 0.795], [800, 900, 1000])
    assert verdict("more accurate", info([0.85, 0.86, 0.84]), mezo)["verdict"] == "holds"
    assert verdict("more accurate", info([0.70, 0.71, 0.69]), mezo)["verdict"] == "does not hold"
    assert verdict("more accurate", info([0.75, 0.86, 0.81]), mezo)["verdict"] == "cannot tell at this size"
    assert verdict("no accuracy loss", info([0.80, 0.805, 0.795]), mezo)["verdict"] == "holds"
    assert verdict("no accuracy loss", info([0.70, 0.71, 0.69]), mezo)["verdict"] == "does not hold"
    assert verdict("faster", info([0.8] * 3, [300, 350, 400]), mezo)["verdict"] == "holds"
    # a method that never reaches the target is slower only where MeZO's seeds reach it clearly earlier
    assert verdict("faster", info([0.8] * 3, [None, None, None]), info([0.8] * 3, [300, 350, 400]))["verdict"] == "does not hold"
    assert verdict("more accurate", info([0.9]), mezo)["verdict"] == "cannot tell at this size"
    # one seed that misses MeZO's mean final dev decides nothing: one of MeZO's own seeds may miss it too
    assert verdict("faster", info([0.7], [None]), mezo)["verdict"] == "cannot tell at this size"
    assert verdict("faster", info([0.8] * 3, [300, 350, 400]), info([0.8], [800]))["verdict"] == "cannot tell at this size"


def test_never_reaching_the_target_is_judged_by_the_censored_interval():
    """full-mr on 2026-12-04: KerZOO's two seeds never reached MeZO's mean final dev (0.763), but one of MeZO's
    three seeds never did either (0.708 at its end) and the others took 1,600 and 800 forward passes. Counted at
    each side's budget, the difference's interval (+520, about -980 to +2,020) holds 0: it cannot tell."""
    def info(passes, budget):
        return {"tests": [0.7] * len(passes), "reach": {"forward_passes": None, "per_seed_forward_passes": passes},
                "budget_forward_passes": budget}

    result = verdict("faster", info([None, None], 1980), info([1600, None, 800], 2000))
    assert result["verdict"] == "cannot tell at this size"
    assert result["difference"] == pytest.approx(1980 - (1600 + 2000 + 800) / 3)
    assert result["low"] < 0 < result["high"]
    assert "2 of 2 here, 1 of 3 of MeZO's" in result["quantity"]
    row = verdict_table({"claims": [{"method": "kerzoo", "claim": "faster", **result}]})
    assert "**cannot tell at this size** | forward passes to MeZO's final dev" in row
    assert f"{result['difference']:+,.0f} ({result['low']:+,.0f} to {result['high']:+,.0f}) |" in row  # not 1e+03
    # each side is censored at its own budget: MeZO's missing seed counts 2,000, not the method's 1,980
    assert verdict("faster", info([500, 520], 1980), info([1600, None, 800], 2000))["difference"] == pytest.approx(
        510 - 4400 / 3)


def test_a_zero_width_interval_is_marked_as_seeds_that_did_not_spread():
    """lora-bbc: KerZOO reached MeZO's final dev at 792 forward passes in all three seeds; MeZO's seeds count
    2,000 (one reached it at its last evaluation, two never did). No spread on either side: the interval is
    one point, and the table says why rather than printing it as if exact."""
    def info(passes, budget):
        return {"tests": [0.7] * len(passes), "runs": [{"seed": s} for s in range(len(passes))],
                "reach": {"forward_passes": None, "per_seed_forward_passes": passes}, "budget_forward_passes": budget}

    result = verdict("faster", info([792, 792, 792], 1980), info([None, None, 2000], 2000))
    assert result["low"] == result["high"] == pytest.approx(-1208)
    row = verdict_table({"claims": [{"method": "kerzoo", "claim": "faster", **result}]})
    assert "-1,208 (-1,208 to -1,208) [zero width: every seed gave the same value]" in row
    spread = verdict("faster", info([792, 600, 792], 1980), info([None, None, 2000], 2000))
    assert "zero width" not in verdict_table({"claims": [{"method": "kerzoo", "claim": "faster", **spread}]})


def test_paired_interval_by_seed_is_shown_beside_the_verdict():
    """full-mr's test metrics: DiZO against MeZO per seed (0.786 / 0.726 / 0.772 against 0.790 / 0.722 / 0.764).
    Seed 1's split is hard for both, so the per-seed differences (-0.004, +0.004, +0.008) spread far less than
    the runs; the verdict stays on the Welch interval."""
    def info(tests):
        return {"tests": tests, "runs": [{"seed": s} for s in range(len(tests))],
                "reach": {"forward_passes": None, "per_seed_forward_passes": []}, "budget_forward_passes": 1000}

    dizo, mezo = info([0.786, 0.726, 0.772]), info([0.790, 0.722, 0.764])
    result = verdict("more accurate", dizo, mezo)
    assert result["verdict"] == "cannot tell at this size"
    pair = result["paired"]
    half = 4.303 * statistics.stdev([-0.004, 0.004, 0.008]) / math.sqrt(3)
    assert pair["pairs"] == 3 and pair["difference"] == pytest.approx(0.008 / 3)
    assert pair["high"] - pair["low"] == pytest.approx(2 * half)
    assert pair["high"] - pair["low"] < (result["high"] - result["low"]) / 5  # far narrower than Welch's
    assert paired_difference_ci95({0: 1.0, 2: 3.0}, {0: 0.5, 1: 9.0, 2: 2.0})[3] == 2  # only seeds both have
    assert paired_difference_ci95({0: 1.0}, {0: 0.5}) is None
    row = verdict_table({"claims": [{"method": "dizo", "claim": "more accurate", **result}]})
    assert "; paired by seed (3 seeds): +0.00267 (" in row


def test_a_file_that_names_the_paired_interval_is_decided_by_it():
    """The same DiZO numbers under "no accuracy loss": Welch's interval (-0.083 to +0.088) reaches below the
    -2 point margin, the paired one (-0.013 to +0.018) does not. A file that fixed ``verdict_interval =
    "paired"`` gets "holds"; one on Welch (the default) cannot tell; a paired verdict without two shared seeds
    cannot tell either."""
    def info(tests, seeds):
        return {"tests": tests, "runs": [{"seed": s} for s in seeds],
                "reach": {"forward_passes": None, "per_seed_forward_passes": []}, "budget_forward_passes": 1000}

    dizo, mezo = info([0.786, 0.726, 0.772], [0, 1, 2]), info([0.790, 0.722, 0.764], [0, 1, 2])
    welch = verdict("no accuracy loss", dizo, mezo)
    paired = verdict("no accuracy loss", dizo, mezo, interval="paired")
    assert (welch["verdict"], welch["decided_by"]) == ("cannot tell at this size", "welch")
    assert (paired["verdict"], paired["decided_by"]) == ("holds", "paired")
    assert paired["low"] == welch["low"]  # both intervals stay in the result
    row = verdict_table({"claims": [{"method": "dizo", "claim": "no accuracy loss", **paired}]})
    assert "test metric: paired by seed (3 seeds): +0.00267 (-0.0125 to +0.0178) (decides); Welch: +0.00267 (" in row
    apart = verdict("no accuracy loss", info([0.786, 0.726], [0, 1]), info([0.790, 0.722], [2, 3]), interval="paired")
    assert apart["verdict"] == "cannot tell at this size"
    with pytest.raises(ValueError, match="interval must be one of"):
        verdict("faster", dizo, mezo, interval="paried")


def test_report_writes_tables_and_plot(tmp_path):
    exp_file = tmp_path / "toy.toml"
    exp_file.write_text('kind = "convergence"\nmethods = ["mezo", "pezo"]\nseeds = [0]\nsteps = 40\neval_every = 20\n'
                        "[lr_grid]\nmezo = [0.1, 0.2]\npezo = [0.1]\n")
    exp = load_experiment(exp_file)
    with pytest.raises(ValueError, match="no results yet"):
        write_report(exp)
    for rec in [record("mezo", 0.1, 0, [0.6, 0.7], zero=0.5), record("mezo", 0.2, 0, [0.6, 0.65]),
                record("pezo", 0.1, 0, [0.5, 0.6])]:
        append_result(exp.results, rec)
    md, png = write_report(exp)
    text = md.read_text()
    assert "| mezo | 0.1 (grid edge) | 40 | 80 | 1.00 |" in text and "| pezo | 0.1 | 40 | not reached |" in text
    assert "0.1: 0.700*" in text and "0.2: 0.650" in text
    # per seed: when each run first reached MeZO's final dev (0.700), and on which CPU (unknown in these lines)
    assert "| mezo | 0 | 80 | 40 | 1 | 3 | 0.700 | 0.500 | ? |" in text
    assert "| pezo | 0 | not reached | – | – | 3 | 0.600 | 0.500 | ? |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- end to end on a tiny model ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["--part", "final"], "the grid of mezo is not finished: run --part grid first"),
    (["--part", "final", "--dry-run"], "the grid of mezo is not finished: run --part grid first"),
    (["--methods", "kerzoo"], "methods not in this study: kerzoo; it has mezo"),
    (["--seeds", "0", "7"], "seeds not in this study: 7; it has 0, 1, 2"),
])
def test_a_plan_that_cannot_run_is_one_line_before_any_run(tmp_path, capsys, monkeypatch, argv, expected):
    """`bench run` checks every file's plan before it runs any: a bad plan is one line and status 2, and no
    run starts, not even the first file's (valid for `--methods kerzoo`: it has kerzoo, the second does not)."""
    from zotune.bench import convergence
    from zotune.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a run started before the bad plan was reported")

    monkeypatch.setattr(convergence, "run_study", refuse)
    first = tmp_path / "first.toml"
    first.write_text('kind = "convergence"\ntask = "mr"\nmethods = ["mezo", "kerzoo"]\n'
                     '[lr_grid]\nmezo = [0.01]\nkerzoo = [0.01]\n')
    second = tmp_path / "second.toml"
    second.write_text('kind = "convergence"\ntask = "mr"\nmethods = ["mezo"]\n[lr_grid]\nmezo = [0.01]\n')
    files = [str(second)] if "--part" in argv else [str(first), str(second)]
    assert main(["bench", "run", *files, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err == f"zotune bench run: error: {expected}"
    assert not (tmp_path / "results").exists()  # nothing written


def test_run_study_end_to_end_and_resume(tiny_dir, tmp_path):
    custom = {"data": str(FIX / "custom" / "reviews.jsonl"), "template": "Review: {review}\nIt was",
              "label_words": "neg=terrible,pos=great", "label_field": "sentiment"}
    exp_file = tmp_path / "tiny.json"
    exp_file.write_text(json.dumps({
        "kind": "convergence", "task": "custom", "model": str(tiny_dir), "methods": ["mezo", "dizo"],
        "lr_grid": {"mezo": [1e-2, 1e-3], "dizo": [1e-2]}, "eps": 1e-2, "seeds": [0, 1], "grid_seeds": [0],
        "steps": 4, "eval_every": 2, "batch_size": 2, "num_train": 6, "num_dev": 2, "num_eval": 2,
        "method_options": {"dizo": {"interval": 2, "search_iters": 1, "projected": "all"}}, "train_options": custom,
    }))
    exp = load_experiment(exp_file)
    assert run_study(exp, "grid", echo=lambda _: None) == 3
    ran = run_study(exp, "all", echo=lambda _: None)
    assert ran == 2  # one more seed each for mezo and dizo at their kept lr
    assert run_study(exp, "all", echo=lambda _: None) == 0  # resumed: nothing left
    records = read_results(exp.results)
    assert len(records) == 5 and all(r["status"] == "completed" for r in records)
    assert sum(1 for r in records if "zero_shot" in r) == 2  # once per seed
    dizo = [r for r in records if r["method"] == "dizo"]
    assert all(r["forward_passes"] == 4 * 2 + 2 * 2 for r in dizo)  # 2 searches of one probe pair
    assert all(r["curve"][-1]["step"] == 4 and 0.0 <= r["test"] <= 1.0 for r in records)
    paths = write_report(exp)
    assert paths[0].exists() and paths[1].exists()


def test_cost_runner_counts_passes_and_random_numbers(tiny_dir):
    cfg = CostConfig(model=str(tiny_dir), peft="full", methods=["mezo", "pezo-block", "dizo"], batch=2, length=8, rounds=1,
                     method_options={"interval": 5, "search_iters": 2, "pool_size": 64})
    result = run_cost(cfg, echo=lambda _: None)
    rows, total = result["rows"], result["trainable_params"]
    assert rows["reference"]["random_numbers_per_step"] == 4 * total
    assert rows["mezo"]["random_numbers_per_step"] == 3 * total  # three regenerations of z per step
    assert rows["pezo-block"]["random_numbers_per_step"] < total / 10
    assert rows["mezo"]["forward_passes_per_step"] == 2 and rows["dizo"]["forward_passes_per_step"] == pytest.approx(2 + 4 / 5)
    assert rows["dizo"]["search_cycle_forward_passes"] == 4 and rows["dizo"]["interval"] == 5  # found as periodic work
    # parameter-sized optimizer state as the optimizers declare it: only DiZO's anchor
    assert rows["dizo"]["state_buffers"] == ["dizo"] and rows["dizo"]["state_mb"] >= 0
    assert rows["mezo"]["state_buffers"] == [] and rows["mezo"]["state_mb"] == 0
    assert rows["pezo-block"]["state_buffers"] == [] and rows["pezo-block"]["state_mb"] == 0
    assert all(row["memory_ratio_to_inference"] > 0 for name, row in rows.items() if name != "forward x2")
    assert "| dizo |" in cost_table(result)
    assert f"| {rows['dizo']['state_mb']:,.1f} (dizo) |" in cost_table(result)  # the optimizer-state column
    with pytest.raises(ValueError, match="pool_sise are not options"):
        run_cost(CostConfig(model=str(tiny_dir), methods=["mezo"], method_options={"pool_sise": 64}), echo=lambda _: None)


def test_cost_report_takes_the_newest_memory_line(tmp_path):
    exp_file = tmp_path / "c.toml"
    exp_file.write_text('kind = "cost"\nmethods = ["mezo"]\n')
    exp = load_experiment(exp_file)
    rows = {"forward x2": {"seconds_per_step": 2.0, "forward_passes_per_step": 2, "random_numbers_per_step": 0, "ratio_to_two_forwards": 1.0},
            "reference": {"seconds_per_step": 3.0, "forward_passes_per_step": 2, "random_numbers_per_step": 40,
                          "ratio_to_two_forwards": 1.5, "memory_ratio_to_inference": 1.4},
            "mezo": {"seconds_per_step": 2.2, "forward_passes_per_step": 2, "random_numbers_per_step": 30,
                     "ratio_to_two_forwards": 1.1, "memory_ratio_to_inference": 1.2, "state_mb": 0.0, "state_buffers": []}}
    timed = {"kind": "cost", "config": {**vars(exp.config)}, "rows": rows, "trainable_params": 10, "threads": 2,
             "peak_rss_mb": {"infer": 100.0, "reference": 140.0, "mezo": 120.0}, "wall_seconds": 9.0}
    append_result(exp.results, timed)
    md = write_report(exp)[0].read_text()
    # the optimizer-state column: a row that has it (mezo: none), and one without it (as older results) shows –
    assert "| mezo | 2.200 | 1.100 | 2 | 30 | 0.0 | 1.200 |" in md and "| reference | 3.000 | 1.500 | 2 | 40 | – | 1.400 |" in md
    append_result(exp.results, {"kind": "cost-memory", "peak_rss_mb": {"infer": 100.0, "reference": 130.0, "mezo": 103.0},
                                "memory_ratio_to_inference": {"reference": 1.3, "mezo": 1.03}, "wall_seconds": 5.0})
    md = write_report(exp)[0].read_text()
    assert "| mezo | 2.200 | 1.100 | 2 | 30 | 0.0 | 1.030 |" in md and "separate run: 5 s" in md
    faster = {**timed, "rows": {**rows, "mezo": {**rows["mezo"], "seconds_per_step": 2.1, "ratio_to_two_forwards": 1.05}}}
    del faster["peak_rss_mb"]  # a --no-memory run: its timing, the newest memory line's ratios
    append_result(exp.results, faster)
    assert "| mezo | 2.100 | 1.050 | 2 | 30 | 0.0 | 1.030 |" in write_report(exp)[0].read_text()
    append_result(exp.results, timed)  # a newer timed run carries its own memory again
    assert "| mezo | 2.200 | 1.100 | 2 | 30 | 0.0 | 1.200 |" in write_report(exp)[0].read_text()


def test_claims_keep_two_workers_off_the_same_run(tmp_path):
    from zotune.bench.convergence import _claim

    key = RunKey("mezo", 0.1, 0)
    first = _claim(tmp_path / "claims", key)
    assert first is not None and first.read_text() == str(__import__("os").getpid())
    assert _claim(tmp_path / "claims", key) is None  # held by a live process (this one)
    first.write_text("999999999")  # a worker that no longer exists
    assert _claim(tmp_path / "claims", key) == first  # the stale claim is taken over


def test_scale_benchmark_builds_one_copy_of_random_weights_and_reports_both_modes(tmp_path) -> None:
    """The scale experiment's machinery on a tiny shape: weights materialised in bf16 from the meta device
    and filled in place (std as asked, norms one, rotary frequencies as a normally built model's), both
    modes in fresh processes, the ratios and the Adam estimate in the result line."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from zotune.bench.experiments import load_experiment
    from zotune.bench.scale import ScaleConfig, build_random_llama
    from zotune.cli import main

    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
                batch=2, length=8, steps=2)
    model = build_random_llama(ScaleConfig(**tiny))
    weights = [p for p in model.parameters() if p.dim() == 2]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert abs(torch.cat([p.float().flatten() for p in weights]).std().item() - 0.02) < 0.002
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters() if p.dim() == 1)
    reference = LlamaForCausalLM(LlamaConfig(**{k: tiny[k] for k in ("hidden_size", "intermediate_size",
                                                                      "num_hidden_layers", "num_attention_heads",
                                                                      "vocab_size")}, max_position_embeddings=128))
    ours = dict(model.named_buffers())
    for name, buffer in reference.named_buffers():
        if "inv_freq" in name:
            torch.testing.assert_close(ours[name], buffer.to(ours[name].dtype))  # as model.to(bf16) leaves it
    experiment = tmp_path / "tiny.toml"
    experiment.write_text('kind = "scale"\n' + "".join(f"{k} = {v}\n" for k, v in tiny.items()))
    assert main(["bench", "run", str(experiment)]) == 0
    record = json.loads(load_experiment(experiment).results.read_text().splitlines()[-1])
    assert record["params"] == sum(p.numel() for p in model.parameters())
    assert record["modes"]["zo"]["losses"] and all(math.isfinite(v) for v in record["modes"]["zo"]["losses"])
    assert record["adam_estimate_mb"] == round(16 * record["params"] / 2**20, 1)
    assert record["cpu_capability"] and record["zo_peak_over_inference"] > 0
