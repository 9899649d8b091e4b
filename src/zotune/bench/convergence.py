"""Convergence study: every method at its own learning rate, several seeds, on one task.

Protocol (one experiment file = one task):

1. **Grid.** Every method runs at every learning rate of its grid on the ``grid_seeds``. The learning rate
   kept for a method is the one with the highest mean *best dev metric* (the dev metric of the best-dev
   checkpoint, the one the run reports on test) over the grid seeds; ties go to the higher mean final dev
   metric, then to the smaller learning rate. A diverged run counts as -inf. With ``extend_grid = k``, an
   edge of the grid that wins adds the next point beyond it (the grid's own ratio away), up to k points, so
   the kept rate is bracketed (:func:`lr_grid`). With ``grid_stop_loss_ratio = r``, a grid run whose training
   loss meets the divergence rule at ratio r (:func:`zotune.train.runner.loss_divergence`: the mean of the
   latest tenth of its 100 loss windows above r times the first window) is stopped there and counts as
   diverged; a finished run whose loss curve meets the rule counts as diverged too, so runs made before the
   rule was set are scored alike. Such an lr cannot be the one kept, and stopping it early saves most of
   its run.
2. **Final.** Every method runs at its kept learning rate on every seed of ``seeds``. Runs of the grid with
   the same (method, lr, seed) are the same run and are not repeated.

Each finished run appends one JSON line: its key (method, lr, seed), the dev curve (step, forward passes,
dev metric, wall time), zero-shot numbers (computed in the first run of each seed only: they depend on the
seed's data split, not on the method), the test metric of the best-dev checkpoint, and its wall and CPU
time. Runs already in the file are skipped, so a study can be interrupted and resumed, or split across
processes with ``methods`` filters.

Budget: ``budget = "steps"`` gives every method ``steps`` steps; ``"forward_passes"`` gives every method MeZO's
2 x ``steps`` forward passes (the authors' KerZOO, six passes a step, runs a third of the steps), with the same
number of dev evaluations. Method names may carry a label (``pezo@pre-generation``): the same zotune method
with other ``method_options``.

Analysis (:func:`summarize`): MeZO's *final dev metric* is the mean over seeds of its dev metric at the
last step; MeZO's *final training loss* the mean of its last 10% of training-loss windows. For each method, the steps (and forward passes) to reach it are read off the seed-mean dev
curve at the evaluation points (first point >= target; ``None`` when never reached), and per seed; the
ratio to MeZO's own is the claim under test. Test metrics and final losses carry t-based 95% confidence
intervals over seeds, and each claim of the experiment file (``claims``) gets a verdict (:func:`verdict`), on
the interval the file names (``verdict_interval``: Welch over seeds, or paired by seed).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zotune.bench.experiments import Experiment, append_result, read_results

CLAIMS = ("faster", "more accurate", "no accuracy loss")
VERDICT_INTERVALS = ("welch", "paired")
NO_LOSS_MARGIN = 0.02  # "no accuracy loss" holds when the test difference's 95% interval stays above -2 points

__all__ = [
    "CLAIMS",
    "VERDICT_INTERVALS",
    "ConvergenceConfig",
    "RunKey",
    "choose_lr",
    "ci95",
    "difference_ci95",
    "paired_difference_ci95",
    "final_loss",
    "forward_passes_per_step",
    "loss_curve",
    "loss_diverged",
    "lr_grid",
    "mean_curve",
    "planned_runs",
    "run_study",
    "summarize",
    "verdict",
    "zotune_method",
]


@dataclass
class ConvergenceConfig:
    """One task's study (a ``kind = "convergence"`` file under ``benchmarks/``)."""

    task: str = "mr"
    model: str = "smollm2-135m"
    peft: str = "prefix"
    methods: list[str] = field(default_factory=lambda: ["mezo", "kerzoo", "pezo", "dizo", "kerzoo+pezo+dizo"])
    lr_grid: dict[str, list[float]] = field(default_factory=dict)  # method -> learning rates
    eps: float | None = None
    grid_seeds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100
    batch_size: int = 8
    eval_every: int = 20
    num_train: int = 1000
    num_dev: int = 100
    num_eval: int = 300
    max_length: int = 64
    threads: int | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> options
    train_options: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field (e.g. a custom task)
    # "steps": every method runs ``steps`` steps; "forward_passes": every method gets MeZO's 2 * steps forward
    # passes (a method spending p per step runs about 2 * steps / p steps, with as many dev evaluations)
    budget: str = "steps"
    # how many learning rates may be added to a method's grid beyond an edge that won (0: the grid as written)
    extend_grid: int = 0
    loss_points: int = 100  # the training loss is kept as this many window means per run
    # stop grid runs whose training loss diverges (see the module docstring; None: every run runs to its end)
    grid_stop_loss_ratio: float | None = None
    # the interval a verdict rests on: "welch" (unpaired, over each side's seeds) or "paired" (per-seed
    # differences over the seeds both sides have); fixed in the file before its runs (see :func:`verdict`)
    verdict_interval: str = "welch"
    # the claims the study tests: {method, claim ("faster", "more accurate" or "no accuracy loss"), source}
    claims: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods must name at least one method")
        missing = [m for m in self.methods if not self.lr_grid.get(m)]
        if missing:
            raise ValueError(f"lr_grid has no learning rates for {', '.join(missing)}")
        if not set(self.grid_seeds) <= set(self.seeds):
            raise ValueError("grid_seeds must be among seeds (grid runs are reused as final runs)")
        if self.steps < 1 or self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError("steps and eval_every must be positive and steps a multiple of eval_every")
        from zotune.train.config import TrainConfig

        owned = {"model", "task", "method", "peft", "steps", "lr", "eps", "batch_size", "eval_every", "seed", "out",
                 "num_train", "num_dev", "num_eval", "max_length", "threads", "method_options", "zero_shot",
                 "progress", "overwrite"}
        bad = sorted(set(self.train_options) - (set(TrainConfig().flat()) - owned))
        if bad:
            raise ValueError(f"train_options cannot set {', '.join(bad)} (unknown, or a field of the study itself)")
        unknown = sorted(set(self.method_options) - set(self.methods))
        if unknown:
            raise ValueError(f"method_options for methods not in the study: {', '.join(unknown)}")
        from zotune.methods import parse_method

        for method in self.methods:
            parse_method(zotune_method(method))  # an unknown method fails here, before any run
        if self.budget not in ("steps", "forward_passes"):
            raise ValueError(f"budget must be 'steps' or 'forward_passes', got {self.budget!r}")
        if self.extend_grid < 0 or self.loss_points < 1:
            raise ValueError("extend_grid must be >= 0 and loss_points >= 1")
        from zotune.train.runner import LOSS_WINDOWS  # imported here: this module loads without torch

        if self.grid_stop_loss_ratio is not None and (self.grid_stop_loss_ratio < 1 or self.loss_points != LOSS_WINDOWS):
            raise ValueError(f"grid_stop_loss_ratio must be >= 1 and needs loss_points = {LOSS_WINDOWS} (the rule's windows)")
        if self.verdict_interval not in VERDICT_INTERVALS:
            raise ValueError(f"verdict_interval must be one of {', '.join(VERDICT_INTERVALS)}, got {self.verdict_interval!r}")
        for claim in self.claims:
            if claim.get("method") not in self.methods or claim.get("claim") not in CLAIMS:
                raise ValueError(f"a claim needs a method of the study and a claim among {', '.join(CLAIMS)}: {claim}")

    @property
    def evaluations(self) -> int:
        return self.steps // self.eval_every

    def steps_for(self, method: str) -> int:
        """Steps of ``method``'s runs: ``steps``, or with a forward-pass budget MeZO's 2 * steps passes divided
        by the method's mean passes per step, rounded to a whole number of evaluation intervals."""
        if self.budget == "steps":
            return self.steps
        passes = forward_passes_per_step(zotune_method(method), self.method_options.get(method, {}))
        per_eval = max(1, round(2 * self.eval_every / passes))
        return per_eval * self.evaluations

    def eval_every_for(self, method: str) -> int:
        return self.steps_for(method) // self.evaluations


def zotune_method(name: str) -> str:
    """The zotune method of a study's method name: ``pezo@pool`` is ``pezo`` (the label after ``@`` tells
    apart two option sets of one method, each with its own ``method_options`` and grid)."""
    return name.split("@", 1)[0]


def forward_passes_per_step(method: str, options: dict[str, Any] | None = None) -> float:
    """Mean forward passes a step of ``method`` costs: its estimator's probes plus, for DiZO, the search's
    2 * search_iters passes every ``interval`` steps (built on a dummy tensor: nothing is trained)."""
    import torch

    from zotune.methods import build_optimizer

    # names a key/value projection would have, so DiZO's default projection set finds something
    params = [(f"model.layers.0.self_attn.{name}.weight", torch.nn.Parameter(torch.zeros(2, 2))) for name in ("k_proj", "v_proj")]
    optimizer = build_optimizer(method, params, **(options or {}))
    passes = float(optimizer.estimator.forward_passes_per_step())
    for transform in optimizer.transforms:
        if getattr(transform, "name", None) == "dizo":
            passes += 2 * transform.search_iters / transform.interval
    return passes


@dataclass(frozen=True)
class RunKey:
    method: str
    lr: float
    seed: int

    @classmethod
    def of(cls, record: dict[str, Any]) -> "RunKey":
        return cls(record["method"], float(record["lr"]), int(record["seed"]))


def _done(records: list[dict[str, Any]]) -> dict[RunKey, dict[str, Any]]:
    return {RunKey.of(r): r for r in records}


def current(cfg: ConvergenceConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results made with this file's length of run: a run of another ``steps`` (the file was changed
    after it ran) is neither reused nor analysed. Results older than the ``steps`` field are kept."""
    return [r for r in records if r.get("steps") is None or r["steps"] == cfg.steps_for(r["method"])]


def grid_runs(cfg: ConvergenceConfig, methods: Iterable[str] | None = None,
              records: list[dict[str, Any]] | None = None) -> list[RunKey]:
    wanted = list(methods) if methods else cfg.methods
    return [RunKey(m, lr, s) for m in wanted for lr in lr_grid(cfg, records or [], m)[0] for s in cfg.grid_seeds]


def lr_grid(cfg: ConvergenceConfig, records: list[dict[str, Any]], method: str) -> tuple[list[float], bool]:
    """``method``'s learning rates and whether they are all run: the file's grid, then, with ``extend_grid``,
    one more point beyond whichever edge won (the grid's own ratio away, 3x with one point), until the best
    is inside the grid or ``extend_grid`` points were added. Derived from the results alone, so every worker
    and every resume plans the same grid."""
    grid = sorted(float(lr) for lr in cfg.lr_grid[method])
    done = _done(current(cfg, records))
    for _ in range(cfg.extend_grid + 1):
        scores = _grid_scores(cfg, done, method, grid)
        if scores is None:
            return grid, False
        best = max(scores)[1]
        factor = grid[1] / grid[0] if len(grid) > 1 else 3.0
        if best == grid[-1]:
            extra = grid[-1] * factor
        elif best == grid[0]:
            extra = grid[0] / factor
        else:
            break
        if len(grid) - len(cfg.lr_grid[method]) >= cfg.extend_grid:
            break
        grid = sorted([*grid, float(f"{extra:.3g}")])
    return grid, True


def _grid_scores(cfg: ConvergenceConfig, done: dict[RunKey, dict[str, Any]], method: str,
                 grid: list[float]) -> list[tuple[tuple[float, float, float], float]] | None:
    scores = []
    for lr in grid:
        runs = [done.get(RunKey(method, lr, s)) for s in cfg.grid_seeds]
        if any(r is None for r in runs):
            return None
        per_seed = [_score(r, cfg) for r in runs]
        mean_best = statistics.fmean(s[0] for s in per_seed) if all(math.isfinite(s[0]) for s in per_seed) else -math.inf
        mean_final = statistics.fmean(s[1] for s in per_seed) if all(math.isfinite(s[1]) for s in per_seed) else -math.inf
        scores.append(((mean_best, mean_final, -lr), lr))
    return scores


def loss_diverged(cfg: ConvergenceConfig, record: dict[str, Any]) -> bool:
    """Whether a finished run's loss curve meets the grid's divergence rule (``grid_stop_loss_ratio``): a run
    made before the rule was set, or a final run (never stopped), that the rule would have stopped."""
    from zotune.train.runner import loss_divergence

    if cfg.grid_stop_loss_ratio is None:
        return False
    return loss_divergence([p["loss"] for p in record.get("loss_curve") or []], cfg.grid_stop_loss_ratio) is not None


def _score(record: dict[str, Any] | None, cfg: ConvergenceConfig) -> tuple[float, float]:
    if record is None or record.get("status") != "completed" or loss_diverged(cfg, record):
        return (-math.inf, -math.inf)
    return (record["best_dev"], record["curve"][-1]["dev"])


def choose_lr(cfg: ConvergenceConfig, records: list[dict[str, Any]], method: str) -> float | None:
    """The grid's learning rate for ``method`` (see the module docstring); None until its grid is complete."""
    grid, complete = lr_grid(cfg, records, method)
    if not complete:
        return None
    scores = _grid_scores(cfg, _done(current(cfg, records)), method, grid)
    return max(scores)[1] if scores else None


def planned_runs(cfg: ConvergenceConfig, records: list[dict[str, Any]], part: str, methods: Iterable[str] | None = None,
                 seeds: Iterable[int] | None = None) -> list[RunKey]:
    """Runs of ``part`` ("grid", "final" or "all") not yet in ``records``; final runs need a finished grid.

    ``methods`` and ``seeds`` keep only those; with ``seeds`` the runs come seed by seed in the order given
    (``[1, 2]``: every method's seed 1 before any seed 2), so each claim gets its second seed soonest."""
    if part not in ("grid", "final", "all"):
        raise ValueError(f"part must be grid, final or all, got {part!r}")
    order = list(dict.fromkeys(seeds)) if seeds is not None else None
    stray = sorted(set(order or []) - set(cfg.seeds) - set(cfg.grid_seeds))
    if stray:
        raise ValueError(f"seeds not in this study: {', '.join(map(str, stray))}; it has {', '.join(map(str, cfg.seeds))}")
    records = current(cfg, records)
    wanted = list(methods) if methods else cfg.methods
    unknown = sorted(set(wanted) - set(cfg.methods))
    if unknown:
        raise ValueError(f"methods not in this study: {', '.join(unknown)}; it has {', '.join(cfg.methods)}")
    done = _done(records)
    keys: list[RunKey] = []
    if part in ("grid", "all"):
        keys += grid_runs(cfg, wanted, records)
    if part in ("final", "all"):
        for method in wanted:
            lr = choose_lr(cfg, records, method)
            if lr is None:
                if part == "final":
                    raise ValueError(f"the grid of {method} is not finished: run --part grid first")
                continue  # "all": the final runs are planned again once the grid is done
            keys += [RunKey(method, lr, s) for s in cfg.seeds]
    seen: set[RunKey] = set()
    todo = [k for k in keys if not (k in done or k in seen or seen.add(k))]
    if order is not None:
        todo = sorted((k for k in todo if k.seed in order), key=lambda k: order.index(k.seed))  # stable: methods' order kept
    return todo


def _train_config(cfg: ConvergenceConfig, key: RunKey, out: Path, zero_shot: bool) -> Any:
    from zotune.train.config import TrainConfig

    options = dict(cfg.train_options)
    if cfg.grid_stop_loss_ratio is not None and key.seed in cfg.grid_seeds:
        options["stop_loss_ratio"] = cfg.grid_stop_loss_ratio
    return TrainConfig.from_flat(
        model=cfg.model, task=cfg.task, method=zotune_method(key.method), peft=cfg.peft, steps=cfg.steps_for(key.method), lr=key.lr,
        eps=cfg.eps, batch_size=cfg.batch_size, eval_every=cfg.eval_every_for(key.method), seed=key.seed, out=str(out), num_train=cfg.num_train,
        num_dev=cfg.num_dev, num_eval=cfg.num_eval, max_length=cfg.max_length, threads=cfg.threads,
        method_options=dict(cfg.method_options.get(key.method, {})), zero_shot=zero_shot, progress=False,
        overwrite=True, **options,
    )


def run_one(cfg: ConvergenceConfig, key: RunKey, zero_shot: bool, workdir: Path) -> dict[str, Any]:
    """Train one run and return its result line (a diverged run is a result too)."""
    import torch

    from zotune.bench.step import machine
    from zotune.train.loop import TrainingDiverged, train

    out = workdir / f"{key.method}-lr{key.lr:g}-seed{key.seed}"
    started = time.perf_counter()
    status, error = "completed", None
    try:
        summary = train(_train_config(cfg, key, out, zero_shot), echo=lambda _: None)
    except TrainingDiverged as exc:
        # the run folder is temporary and goes with the runner, so the line names no checkpoint path
        summary, status = json.loads((out / "summary.json").read_text()), "diverged"
        error = f"{exc.reason}; stopped (the runner keeps no checkpoints)"
    metrics = _read_metrics(out)
    metric = summary["metric"]
    curve = [{"step": r["step"], "forward_passes": r["forward_passes"], "dev": r[f"dev_{metric}"], "wall_time": round(r["wall_time"], 1)}
             for r in metrics if f"dev_{metric}" in r]
    record: dict[str, Any] = {
        "method": key.method, "lr": key.lr, "seed": key.seed, "status": status, "metric": metric,
        "curve": curve, "best_dev": (summary.get("final") or {}).get("dev", {}).get(metric) if status == "completed" else None,
        "best_step": summary.get("best_step"), "test": ((summary.get("final") or {}).get("test") or {}).get(metric),
        "forward_passes": summary.get("forward_passes"), "nonfinite_steps": summary.get("nonfinite_steps"),
        "wall_seconds": round(time.perf_counter() - started, 1), "train_seconds": round(summary.get("train_seconds", 0.0), 1),
        "cpu_seconds": round(summary.get("cpu_seconds", 0.0), 1), "threads": summary.get("threads"),
        "trainable_params": summary.get("trainable_params"), "steps": cfg.steps_for(key.method),
        "peak_memory_mb": summary.get("peak_memory_mb"), "peak_memory_scope": summary.get("peak_memory_scope"),
        "packed_forwards": summary.get("packed_forwards"),
        "loss_curve": loss_curve(metrics, cfg.loss_points),
        "random_numbers_per_step": _mean_of(r.get("random_numbers") for r in metrics if "loss" in r),
        # where and when: wall times from machines with another CPU are not comparable
        **machine(), "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if error:
        record["error"] = error
    if "zero_shot" in summary:
        record["zero_shot"] = {split: values.get(metric) for split, values in summary["zero_shot"].items()}
    return record


def loss_curve(metrics: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """The training loss of every step (the mean of its probe losses), as ``points`` window means: each point
    has the window's last step and forward passes; non-finite losses are left out of their window."""
    from zotune.train.runner import loss_window_size

    steps = [r for r in metrics if "loss" in r and "step" in r and r["step"] > 0]
    if not steps:
        return []
    size = loss_window_size(len(steps), points)
    out = []
    for at in range(0, len(steps), size):
        window = steps[at: at + size]
        finite = [r["loss"] for r in window if r["loss"] is not None and math.isfinite(r["loss"])]
        out.append({"step": window[-1]["step"], "forward_passes": window[-1]["forward_passes"],
                    "loss": statistics.fmean(finite) if finite else None})
    return out


def _mean_of(values: Iterable[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _claim(folder: Path, key: RunKey) -> Path | None:
    """Claim ``key`` for this process (a file created exclusively, holding our pid); None if another live
    process holds it. A claim whose process is gone (a killed worker) is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.method}-lr{key.lr:g}-seed{key.seed}"
    for _ in range(2):
        try:
            with open(path, "x") as handle:
                handle.write(str(os.getpid()))
            return path
        except FileExistsError:
            try:
                owner = int(path.read_text() or "0")
                os.kill(owner, 0)  # raises if no such process
                return None
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # stale: its worker died; try once more
            except (PermissionError, FileNotFoundError):
                return None
    return None


def run_study(exp: Experiment, part: str = "all", methods: Iterable[str] | None = None,
              echo: Callable[[str], None] | None = None, workdir: Path | None = None,
              seeds: Iterable[int] | None = None) -> int:
    """Run every planned run of ``part`` not yet in the results file; returns how many this process ran.

    Several processes may run the same study at once: each run is claimed (``<results>.claims/``) before it
    starts, so every worker takes the next run nobody holds.
    """
    echo = echo or (lambda message: print(message, file=sys.stderr))
    cfg: ConvergenceConfig = exp.config
    methods = list(methods) if methods is not None else None  # read again before every run
    seeds = list(seeds) if seeds is not None else None
    claims = exp.results.with_name(exp.results.name + ".claims")
    ran = 0
    with tempfile.TemporaryDirectory(prefix="zotune-bench-") as tmp:
        base = workdir or Path(tmp)
        while True:
            records = read_results(exp.results)
            todo = planned_runs(cfg, records, part, methods, seeds)
            claim, key = None, None
            for candidate in todo:
                claim = _claim(claims, candidate)
                if claim is not None:
                    key = candidate
                    break
            if key is None or claim is None:
                break  # nothing left, or the rest is held by other workers
            try:
                if key in {RunKey.of(r) for r in current(cfg, read_results(exp.results))}:
                    continue  # finished by another worker between our read and our claim
                records = read_results(exp.results)
                zero_shot = not any(r.get("zero_shot") and r["seed"] == key.seed for r in records)
                echo(f"[{exp.name}] {key.method} lr={key.lr:g} seed={key.seed} ({len(todo)} planned runs left)")
                record = run_one(cfg, key, zero_shot, base)
                append_result(exp.results, {"experiment": exp.name, "task": cfg.task, "model": cfg.model, "peft": cfg.peft, **record})
                echo(f"[{exp.name}]   {record['status']}: best dev {record['best_dev']}, test {record['test']}, {record['wall_seconds']} s")
                ran += 1
            finally:
                claim.unlink(missing_ok=True)
    return ran


# ---------------------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------------------


def mean_curve(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Seed-mean (and min / max / std) of dev metric and forward passes at each evaluated step.

    Only steps every run evaluated are kept, so a diverged (shortened) run shortens the mean curve.
    """
    steps = sorted(set.intersection(*({p["step"] for p in r["curve"]} for r in records))) if records else []
    out = []
    for step in steps:
        points = [next(p for p in r["curve"] if p["step"] == step) for r in records]
        devs = [p["dev"] for p in points]
        out.append({
            "step": step, "dev": statistics.fmean(devs), "dev_min": min(devs), "dev_max": max(devs),
            "dev_std": statistics.stdev(devs) if len(devs) > 1 else 0.0,
            "forward_passes": statistics.fmean(p["forward_passes"] for p in points),
        })
    return out


def first_reaching(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first point of a curve whose dev metric is >= target (None if no point is)."""
    return next((p for p in curve if p["dev"] >= target - 1e-12), None)


def _with_step_zero(record: dict[str, Any], zero_shot: dict[str, Any] | None) -> dict[str, Any]:
    """The run with its seed's zero-shot dev metric as step 0 of its curve (only the first run of a seed
    evaluates it; it is the same model and data for every method)."""
    curve = record["curve"]
    if curve and curve[0]["step"] == 0 or not zero_shot or zero_shot.get("dev") is None:
        return record
    return {**record, "curve": [{"step": 0, "forward_passes": 0, "dev": zero_shot["dev"], "wall_time": 0.0}, *curve]}


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: float) -> float:
    """Student's t 97.5% quantile, at the whole degrees of freedom below ``df`` (a slightly wider interval)."""
    whole = max(1, math.floor(df))
    return _T975[whole - 1] if whole <= len(_T975) else 1.96


def ci95(values: list[float]) -> float | None:
    """Half-width of the t-based 95% confidence interval of the mean (None with fewer than two values)."""
    if len(values) < 2:
        return None
    return t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_difference_ci95(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int] | None:
    """mean(a[s] - b[s]) over the seeds both have, its t-based 95% interval (low, high) and the number of pairs;
    None with fewer than two pairs. A seed fixes the data split (train, dev and test draw), so runs of one
    seed share its easy or hard test set and the per-seed difference removes that part of the spread."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    half = ci95(diffs) or 0.0
    return mean, mean - half, mean + half, len(diffs)


def difference_ci95(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) and its Welch 95% interval (low, high); None with fewer than two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0))
    half = t975(df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def final_loss(record: dict[str, Any], tail: float = 0.1) -> float | None:
    """A run's final training loss: the mean of the last ``tail`` of its loss curve (at least one point)."""
    points = [p["loss"] for p in record.get("loss_curve") or [] if p["loss"] is not None]
    if not points:
        return None
    return statistics.fmean(points[-max(1, round(tail * len(points))):])


def mean_loss_curve(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Seed-mean training loss (and min / max) at each window all runs have (the runs of one method share
    their steps)."""
    curves = [r.get("loss_curve") or [] for r in records]
    if not curves or not all(curves):
        return []
    out = []
    for points in zip(*curves):
        losses = [p["loss"] for p in points]
        if any(v is None for v in losses):
            continue
        out.append({"step": points[0]["step"], "forward_passes": statistics.fmean(p["forward_passes"] for p in points),
                    "loss": statistics.fmean(losses), "loss_min": min(losses), "loss_max": max(losses)})
    return out


def verdict(claim: str, method: dict[str, Any], baseline: dict[str, Any], interval: str = "welch") -> dict[str, Any]:
    """One claim against MeZO, decided by 95% intervals over seeds:

    * ``more accurate``: the test-metric difference's Welch interval above 0 holds, below 0 does not hold;
    * ``no accuracy loss``: holds when the interval's low end is above -NO_LOSS_MARGIN, does not hold when its
      high end is below 0 (a loss larger than the spread);
    * ``faster``: forward passes to MeZO's final dev metric, per seed; a seed that never reaches it counts as
      its own side's whole budget (censored there: the true figure is at least that). The difference's
      interval below 0 holds, above 0 does not hold. A method none of whose seeds reaches the target is
      judged by the same interval, not declared slower outright: MeZO's own seeds may miss its mean final
      dev too (one of its three did in full-mr), so "never reached" by two seeds can sit inside MeZO's spread.

    Anything else is "cannot tell at this size" (the interval contains the answer either way), and so is every
    claim while a side has fewer than two completed seeds. Where both sides' runs are known, the result also
    carries ``paired``: the same difference taken seed by seed (:func:`paired_difference_ci95`), narrower
    where a seed's data split is easy or hard for every method.

    ``interval`` says which of the two decides, and an experiment file fixes it before its runs
    (``verdict_interval``): ``"welch"`` (full-mr, whose rule was set before the paired interval existed; there
    the paired one is shown, not used) or ``"paired"`` (lora-bbc, chosen before its first run, after full-mr
    showed that a seed's split moves every method alike). A paired verdict needs two seeds both sides have;
    the result's ``decided_by`` names the interval used."""
    if interval not in VERDICT_INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(VERDICT_INTERVALS)}, got {interval!r}")
    if len(method["tests"]) < 2 or len(baseline["tests"]) < 2:
        return {"verdict": "cannot tell at this size", "why": "fewer than two seeds on a side"}
    if claim == "faster":
        ours, theirs = _censored_passes(method), _censored_passes(baseline)
        ci = difference_ci95(ours, theirs)
        missed = (sum(p is None for p in method["reach"].get("per_seed_forward_passes", [])),
                  sum(p is None for p in baseline["reach"].get("per_seed_forward_passes", [])))
        quantity, better_below = "forward passes to MeZO's final dev", True
        paired = paired_difference_ci95(_by_seed(method, ours), _by_seed(baseline, theirs))
        if any(missed):
            quantity += (f" (seeds that never reach it count as the budget: {missed[0]} of {len(ours)} here, "
                         f"{missed[1]} of {len(theirs)} of MeZO's)")
    else:
        ci = difference_ci95(method["tests"], baseline["tests"])
        quantity, better_below = "test metric", False
        paired = paired_difference_ci95(_by_seed(method, method["tests"]), _by_seed(baseline, baseline["tests"]))
    if ci is None:
        return {"verdict": "cannot tell at this size", "why": "fewer than two seeds on a side"}
    diff, low, high = ci
    detail: dict[str, Any] = {"quantity": quantity, "difference": diff, "low": low, "high": high, "decided_by": interval}
    if paired is not None:
        detail["paired"] = dict(zip(("difference", "low", "high", "pairs"), paired))
    if interval == "paired":
        if paired is None:
            return {"verdict": "cannot tell at this size", "why": "fewer than two seeds that both sides have", **detail}
        diff, low, high, _ = paired
    if claim == "no accuracy loss":
        answer = "holds" if low > -NO_LOSS_MARGIN else "does not hold" if high < 0 else "cannot tell at this size"
    elif better_below:
        answer = "holds" if high < 0 else "does not hold" if low > 0 else "cannot tell at this size"
    else:
        answer = "holds" if low > 0 else "does not hold" if high < 0 else "cannot tell at this size"
    return {"verdict": answer, **detail}


def _by_seed(info: dict[str, Any], values: list[float]) -> dict[int, float]:
    """``values`` (one per completed run, in the runs' order) keyed by the runs' seeds; {} where the runs are
    not known (then no paired interval)."""
    runs = info.get("runs") or []
    return {r["seed"]: v for r, v in zip(runs, values)} if len(runs) == len(values) else {}


def _censored_passes(info: dict[str, Any]) -> list[float]:
    return _censored(info["reach"].get("per_seed_forward_passes", []), info.get("budget_forward_passes"))


def _censored(passes: list[float | None], budget: float | None) -> list[float]:
    """Per-seed forward passes to the target, a seed that never reached it counted as ``budget`` (left out
    where no budget is known)."""
    values = [budget if p is None else p for p in passes]
    return [float(v) for v in values if v is not None]


def _walls_by_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean wall seconds per CPU (``cpu_family_model``, "?" where a line lacks it), in the runs' order."""
    walls: dict[str, list[float]] = {}
    for r in runs:
        walls.setdefault(str(r.get("cpu_family_model") or "?"), []).append(r["wall_seconds"])
    return {cpu: statistics.fmean(values) for cpu, values in walls.items()}


def _own_peaks(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose peak memory is their own, or all of them where none is."""
    return [r for r in runs if r.get("peak_memory_scope") == "run"] or runs


def _steps_run(record: dict[str, Any]) -> int:
    """The steps a finished run took (its last evaluation's step where an old line lacks ``steps``)."""
    return int(record.get("steps") or record["curve"][-1]["step"])


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(cfg: ConvergenceConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: kept lr, test mean/std, dev curves, steps and forward passes to reach MeZO's final dev."""
    records = current(cfg, records)
    by_key = _done(records)
    zero = {r["seed"]: r["zero_shot"] for r in records if r.get("zero_shot")}
    methods: dict[str, Any] = {}
    for method in cfg.methods:
        lr = choose_lr(cfg, records, method)
        runs = [by_key[RunKey(method, lr, s)] for s in cfg.seeds if lr is not None and RunKey(method, lr, s) in by_key]
        completed = [_with_step_zero(r, zero.get(r["seed"])) for r in runs if r["status"] == "completed"]
        test_mean, test_std = _mean_std([r["test"] for r in completed])
        grid, _ = lr_grid(cfg, records, method)
        finals = [v for v in (final_loss(r) for r in completed) if v is not None]
        methods[method] = {
            "lr": lr, "seeds": [r["seed"] for r in runs], "diverged": len(runs) - len(completed),
            "grid": grid, "lr_at_edge": lr is not None and len(grid) > 1 and lr in (grid[0], grid[-1]),
            "test_mean": test_mean, "test_std": test_std, "tests": [r["test"] for r in completed],
            "test_ci95": ci95([r["test"] for r in completed]),
            "final_loss_mean": statistics.fmean(finals) if finals else None, "final_loss_ci95": ci95(finals),
            "loss_curve": mean_loss_curve(completed),
            # a run's own peak where it was measured so ("run"); older lines hold their process's peak so far,
            # which in a runner of several runs is an earlier run's, and are used only where no other is
            "peak_memory_mb": _mean_of(r.get("peak_memory_mb") for r in _own_peaks(runs)),
            "peak_memory_own": bool(runs) and all(r.get("peak_memory_scope") == "run" for r in _own_peaks(runs)),
            "random_numbers_per_step": _mean_of(r.get("random_numbers_per_step") for r in runs),
            "wall_seconds": [r["wall_seconds"] for r in runs],
            # wall times of different CPUs are never averaged together: one mean per CPU (family/model)
            "wall_seconds_by_cpu": _walls_by_cpu(runs),
            "budget_forward_passes": max((r["forward_passes"] for r in completed), default=None),
            "curve": mean_curve(completed), "runs": completed,
            "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs) if runs else None,
            # per the method's own steps: under a forward-pass budget KerZOO runs a third of MeZO's steps
            "forward_passes_per_step": (statistics.fmean(r["forward_passes"] / _steps_run(r) for r in completed)
                                        if completed else None),
        }
    baseline = methods.get("mezo")
    target = None
    if baseline and baseline["runs"]:
        target = statistics.fmean(r["curve"][-1]["dev"] for r in baseline["runs"])
    target_loss = baseline["final_loss_mean"] if baseline else None
    for method, info in methods.items():
        hit = first_reaching(info["curve"], target) if target is not None else None
        per_seed = [first_reaching(r["curve"], target) for r in info["runs"]] if target is not None else []
        info["reach"] = {"step": hit["step"] if hit else None, "forward_passes": hit["forward_passes"] if hit else None,
                         "per_seed_steps": [p and p["step"] for p in per_seed],
                         "per_seed_forward_passes": [p and p["forward_passes"] for p in per_seed]}
        low = next((p for p in info["loss_curve"] if target_loss is not None and p["loss"] <= target_loss + 1e-12), None)
        info["reach_loss"] = {"step": low and low["step"], "forward_passes": low and low["forward_passes"]}
    if baseline and baseline["reach"]["step"]:
        for info in methods.values():
            reach = info["reach"]
            reach["step_ratio"] = reach["step"] / baseline["reach"]["step"] if reach["step"] else None
            reach["forward_pass_ratio"] = (reach["forward_passes"] / baseline["reach"]["forward_passes"]
                                           if reach["forward_passes"] else None)
    claims = []
    for claim in cfg.claims:
        info = methods.get(claim["method"])
        result = (verdict(claim["claim"], info, baseline, cfg.verdict_interval) if info and baseline and info["runs"] and baseline["runs"]
                  else {"verdict": "not run yet"})
        claims.append({**claim, **result})
    zs_test, zs_test_std = _mean_std([z["test"] for s, z in zero.items() if s in cfg.seeds and z.get("test") is not None])
    zs_dev, _ = _mean_std([z["dev"] for s, z in zero.items() if s in cfg.seeds and z.get("dev") is not None])
    return {"task": cfg.task, "target_dev": target, "target_loss": target_loss, "claims": claims, "zero_shot": {"test_mean": zs_test, "test_std": zs_test_std, "dev_mean": zs_dev},
            "zero_shot_by_seed": zero, "methods": methods}
