"""The training run: data, model, zero-shot evaluation, the ZO loop, best-dev checkpoint, final test.

The algorithm lives in the optimizer (``zotune.build_optimizer``); this module only feeds it a
closure. The closure is forward-only and deterministic within a step: the batch is drawn once,
outside it, and the model stays in eval mode (no dropout), so the +eps and -eps probes see the same
function.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from zotune.core.seeds import STREAM_AUX, mix
from zotune.llm.evaluate import evaluate
from zotune.llm.models import LoadedModel, load_model
from zotune.llm.objectives import Scorer, resolve_objective
from zotune.llm.peft import PeftSettings, apply_peft, trainable_parameters
from zotune.llm.tasks import CustomTaskSpec, Splits, Task, get_task, make_custom_task, sample_splits
from zotune.train.config import TrainConfig
from zotune.train.plot import plot_run
from zotune.train.run_folder import CHECKPOINT_DIR, RunFolder, default_run_name, save_checkpoint

__all__ = ["TrainingDiverged", "resolve_task", "prepare_data", "train", "BatchSampler"]


class TrainingDiverged(RuntimeError):
    """Raised after ``max_nonfinite`` non-finite losses in a row; the last good checkpoint is kept."""


def resolve_task(cfg: TrainConfig) -> Task:
    """The registered task, or a custom task when ``cfg.data`` names a file."""
    if cfg.is_custom:
        if not cfg.template:
            raise ValueError("a custom task (--data) needs --template, e.g. --template '{text} It was'")
        return make_custom_task(CustomTaskSpec(
            data=cfg.data, template=cfg.template, label_words=cfg.label_words, label_field=cfg.label_field,
            answer_field=cfg.answer_field, test_data=cfg.test_data, name="custom",
        ))
    return get_task(cfg.task)


def prepare_data(cfg: TrainConfig, task: Task) -> Splits:
    return sample_splits(task, cfg.num_train, cfg.num_dev, cfg.num_eval, seed=cfg.seed,
                         local_dir=Path(cfg.data_dir) if cfg.data_dir else None)


class BatchSampler:
    """Epoch-wise shuffled batches from a seeded generator of its own, so no other code's RNG use
    changes which examples a step sees."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("no training examples")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.epoch, self.order, self.pos = 0, np.random.RandomState(seed).permutation(n), 0

    def next(self) -> list[int]:
        if self.pos + self.batch_size > self.n:
            self.epoch += 1
            self.order = np.random.RandomState(self.seed + self.epoch).permutation(self.n)
            self.pos = 0
        idx = self.order[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return [int(i) for i in idx]


_STREAM_FRESH_BATCHES = 0x46524553  # "FRES": keeps fresh batches apart from every other key


def fresh_batch_indices(num_examples: int, batch_size: int, *, seed: int, step: int, iteration: int) -> list[int]:
    """The batch a component's ``fresh_closure(step, iteration)`` sees (zotune.methods): ``batch_size``
    distinct indices of ``range(num_examples)``, from a generator seeded by ``mix(seed, FRES, step,
    iteration)``. A pure function of its arguments, so it neither advances nor depends on the training
    batches, and a resumed run draws the same ones."""
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got {num_examples} and {batch_size}")
    generator = torch.Generator().manual_seed(mix(seed, STREAM_AUX, _STREAM_FRESH_BATCHES, step, iteration))
    order = torch.randperm(num_examples, generator=generator)
    return [int(i) for i in order[: min(batch_size, num_examples)]]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class _Best:
    metric: float = -math.inf
    step: int = 0
    state: dict[str, torch.Tensor] | None = None


def train(cfg: TrainConfig, *, loaded: LoadedModel | None = None, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one fine-tuning job and return its summary (also written to ``<out>/summary.json``).

    Everything that can fail on bad input (task, data file, model name, objective) is checked
    before the run folder is created.
    """
    import zotune

    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    task = resolve_task(cfg)
    objective = resolve_objective(cfg.objective, task.kind, task.default_objective)
    if cfg.method not in zotune.available_methods() and "+" not in cfg.method:
        raise ValueError(f"unknown method {cfg.method!r}; available methods: {', '.join(zotune.available_methods())}")
    splits = prepare_data(cfg, task)
    if not splits.train and cfg.steps > 0:
        raise ValueError("no training examples (num_train is 0 or the data has none)")
    out = cfg.out or default_run_name("custom" if cfg.is_custom else task.name, cfg.model, cfg.peft)
    RunFolder.check_free(out, cfg.overwrite)  # fail now, not after loading the model and evaluating it
    device = _device(cfg.device)
    loaded = loaded or load_model(cfg.model, dtype=cfg.dtype, quiet=False)
    model = loaded.model.to(device)
    model.eval()

    metric = task.metric
    summary: dict[str, Any] = {"task": task.name, "model": cfg.model, "method": cfg.method, "peft": cfg.peft,
                               "objective": objective, "metric": metric, "status": "running",
                               "num_train": len(splits.train), "num_dev": len(splits.dev), "num_test": len(splits.test)}

    def run_eval(scorer: Scorer, examples, name: str) -> dict[str, float]:
        return evaluate(scorer, task, examples, batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                        progress=cfg.progress, desc=name)

    # Zero-shot numbers come from the untouched model, before an adapter (a prefix changes outputs) is added.
    base_scorer = Scorer(model, loaded.tokenizer, cfg.max_length)
    if cfg.zero_shot:
        summary["zero_shot"] = {}
        if splits.dev:
            summary["zero_shot"]["dev"] = run_eval(base_scorer, splits.dev, "zero-shot dev")
        summary["zero_shot"]["test"] = run_eval(base_scorer, splits.test, "zero-shot test")
        echo(f"zero-shot {metric}: dev {summary['zero_shot'].get('dev', {}).get(metric, float('nan')):.4f} "
             f"test {summary['zero_shot']['test'][metric]:.4f}")

    settings = PeftSettings(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, num_virtual_tokens=cfg.prefix_tokens,
                            train_embeddings=cfg.train_embeddings)
    model = apply_peft(model, cfg.peft, settings, seed=cfg.seed).to(device)
    model.eval()  # no dropout: both probes of a step must evaluate the same function
    params = trainable_parameters(model)
    summary["trainable_params"] = sum(p.numel() for _, p in params)
    scorer = Scorer(model, loaded.tokenizer, cfg.max_length)
    method_options = dict(cfg.method_options)

    def fresh_closure(step: int, index: int) -> Callable[[], torch.Tensor]:
        # a loss on a batch of its own, for any component that asks (DiZO's search does), drawn from a seed
        # stream of its own so the training batches and the directions stay what they are without it
        indices = fresh_batch_indices(len(splits.train), cfg.batch_size, seed=cfg.seed, step=step, iteration=index)
        fresh_batch = [splits.train[i] for i in indices]
        return lambda: scorer.loss(fresh_batch, objective, max_new_tokens=cfg.max_new_tokens)

    opt = zotune.build_optimizer(cfg.method, params, lr=cfg.resolved_lr, eps=cfg.resolved_eps,
                                 weight_decay=cfg.weight_decay, seed=cfg.seed, n_queries=cfg.n_queries,
                                 total_steps=cfg.steps or None, fresh_closure=fresh_closure if splits.train else None,
                                 **method_options)
    sampler = BatchSampler(len(splits.train), cfg.batch_size, cfg.seed) if cfg.steps else None
    # The run folder is created only once everything that can fail on bad input has been built.
    run = RunFolder(out, overwrite=cfg.overwrite)
    run.write_config({**cfg.to_dict(), "out": str(run.path), "task": task.name, "objective": objective,
                      "task_source": task.source, "model_source": loaded.source})
    zero_dev = summary.get("zero_shot", {}).get("dev")
    if zero_dev:  # step 0 of the dev curve
        run.log({"step": 0, "forward_passes": 0, "wall_time": time.perf_counter() - t0,
                 **{f"dev_{k}": v for k, v in zero_dev.items() if k != "n"}})
    best = _Best()
    meta = {"model": cfg.model, "task": task.name, "peft": cfg.peft, "method": cfg.method}

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in params}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in params:
                p.copy_(state[n])

    def dev_eval(step: int) -> dict[str, float] | None:
        if not splits.dev:
            return None
        result = run_eval(scorer, splits.dev, f"dev @ {step}")
        if result[metric] > best.metric:  # ties keep the earlier (cheaper) checkpoint
            best.metric, best.step, best.state = result[metric], step, snapshot()
            save_checkpoint(model, run.path / CHECKPOINT_DIR, {**meta, "step": step, f"dev_{metric}": result[metric]})
        return result

    train_start = time.perf_counter()
    consecutive_bad = 0
    ema: float | None = None
    dev_value = summary.get("zero_shot", {}).get("dev", {}).get(metric)
    bar = tqdm(range(1, cfg.steps + 1), desc="train", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for step in bar:
            batch = [splits.train[i] for i in sampler.next()]

            def closure() -> torch.Tensor:
                with torch.no_grad():
                    return scorer.loss(batch, objective, max_new_tokens=cfg.max_new_tokens)

            loss = float(opt.step(closure))
            record: dict[str, Any] = {"step": step, "loss": loss, "lr": opt.param_groups[0]["lr"],
                                      "forward_passes": opt.forward_passes,
                                      "random_numbers": opt.last_step_random_numbers,
                                      "wall_time": time.perf_counter() - t0}
            if math.isfinite(loss):
                consecutive_bad = 0
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            else:
                consecutive_bad += 1
                record["nonfinite"] = True
                if consecutive_bad >= cfg.max_nonfinite:
                    run.log(record)
                    raise TrainingDiverged(
                        f"{consecutive_bad} non-finite losses in a row (step {step}); stopped. "
                        f"Try a smaller --lr or --eps. The last good checkpoint is in {run.path / CHECKPOINT_DIR}"
                    )
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                result = dev_eval(step)
                if result is not None:
                    dev_value = result[metric]
                    record.update({f"dev_{k}": v for k, v in result.items() if k != "n"})
            run.log(record)
            bar.set_postfix(loss=f"{ema:.4f}" if ema is not None else "nan",
                            **({f"dev_{metric[:3]}": f"{dev_value:.3f}"} if dev_value is not None else {}))
        # the final dev evaluation always runs, so the best checkpoint considers the last weights
        final_record: dict[str, Any] = {"step": cfg.steps, "forward_passes": opt.forward_passes,
                                        "wall_time": time.perf_counter() - t0}
        result = dev_eval(cfg.steps)
        if result is not None:
            final_record.update({f"dev_{k}": v for k, v in result.items() if k != "n"})
            run.log(final_record)
            restore(best.state)
        else:
            save_checkpoint(model, run.path / CHECKPOINT_DIR, {**meta, "step": cfg.steps})
            best.step = cfg.steps
        summary["status"] = "completed"
    except TrainingDiverged as exc:
        summary["status"] = "diverged"
        summary["error"] = str(exc)
        raise
    finally:
        bar.close()
        summary.update({
            "steps": cfg.steps, "forward_passes": opt.forward_passes,
            "nonfinite_steps": getattr(opt, "nonfinite_steps", None),
            "train_seconds": time.perf_counter() - train_start,
            "best_step": best.step,
        })
        if summary["status"] == "completed":
            summary["final"] = {"dev": {metric: best.metric} if splits.dev else None,
                                "test": run_eval(scorer, splits.test, "test")}
            zs = summary.get("zero_shot", {}).get("test", {}).get(metric)
            ft = summary["final"]["test"][metric]
            echo(f"test {metric}: zero-shot {zs if zs is None else f'{zs:.4f}'} -> fine-tuned {ft:.4f} "
                 f"(best dev step {best.step}, {summary['steps']} steps)")
        elif summary["status"] == "running":
            summary["status"] = "failed"
        summary["wall_seconds"] = time.perf_counter() - t0
        # CPU seconds of this process: on a shared machine, cpu_seconds / threads estimates the unloaded wall time
        summary["cpu_seconds"] = time.process_time() - cpu0
        summary["threads"] = torch.get_num_threads()
        summary["peak_memory_mb"] = _peak_memory_mb(device)
        run.write_json("summary.json", summary)
        try:
            plot_run(run.read_metrics(), run.path / "curves.png", metric, title=f"{task.name} / {cfg.model} / {cfg.method}-{cfg.peft}")
        except Exception as exc:  # a plot must never hide the run's result
            echo(f"warning: could not draw the plot: {exc}")
    summary["run_folder"] = str(run.path)
    return summary
