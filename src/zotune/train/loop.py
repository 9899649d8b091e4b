"""A fine-tuning job: data, model, zero-shot evaluation, the runner, the final test.

The algorithm lives in the optimizer (``zotune.build_optimizer``) and the loop in the runner
(``zotune.train.runner``); this module wires a language model and a task to them. The closure is
forward-only and deterministic within a step: the batch is drawn once, outside it, and the model stays
in eval mode (no dropout), so the +eps and -eps probes see the same function.

Everything that can fail on bad input (options, task, data files, method, device, the run folder) is
checked before the model loads; nothing is written until the model, the adapter and the optimizer are built.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from zotune.core.distributed import LossSync, Weighted
from zotune.core.memory import peak_memory_mb, reset_peak_memory
from zotune.core.seeds import STREAM_AUX, mix
from zotune.llm.evaluate import evaluate
from zotune.llm.models import LoadedModel, load_model, load_model_config
from zotune.llm.objectives import Scorer, resolve_objective
from zotune.llm.packing import packing_unsupported_by_config
from zotune.llm.peft import PeftSettings, apply_peft, trainable_parameters
from zotune.llm.tasks import CustomTaskSpec, Splits, Task, get_task, make_custom_task, sample_splits
from zotune.train.checkpoint import CHECKPOINT_DIR, latest_resume, load_resume, restore_best, save_checkpoint
from zotune.train.config import TrainConfig, load_config_file, resolve_config
from zotune.train.distributed import RankContext
from zotune.train.plot import plot_run
from zotune.train.run_folder import RunFolder, check_out_folder, check_tensorboard, default_run_name
from zotune.train.runner import BatchSampler, Runner, RunnerState, RunInterrupted, TrainingDiverged
from zotune.train.seedlog import SEED_LOG, SeedLog

__all__ = ["TrainingDiverged", "RunInterrupted", "resolve_task", "prepare_data", "train", "resume", "BatchSampler",
           "fresh_batch_indices", "load_run_config", "check_method", "check_job", "check_resume", "build_trainable_model", "build_run_optimizer"]


def resolve_task(cfg: TrainConfig) -> Task:
    """The registered task, or a custom task when ``cfg.data.data`` names a file."""
    data = cfg.data
    if data.is_custom:
        if not data.template:
            raise ValueError("a custom task (--data) needs --template, e.g. --template '{text} It was'")
        return make_custom_task(CustomTaskSpec(
            data=data.data, template=data.template, label_words=data.label_words, label_field=data.label_field,
            answer_field=data.answer_field, test_data=data.test_data, name="custom",
        ))
    return get_task(data.task)


def prepare_data(cfg: TrainConfig, task: Task) -> Splits:
    data = cfg.data
    return sample_splits(task, data.num_train, data.num_dev, data.num_eval, seed=cfg.run.seed,
                         local_dir=Path(data.data_dir) if data.data_dir else None)


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
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_method(cfg: TrainConfig) -> Any:
    """Build the method on stand-in tensors (and return that optimizer): an unknown name in a ``+`` combination or an option no
    component takes fails here, before the model loads."""
    import zotune

    # one attention block's worth of named tensors, so components that pick tensors by role (DiZO) find theirs
    stand_in = [(f"model.layers.0.self_attn.{name}.weight", torch.zeros(2, 2, requires_grad=True)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    return zotune.build_optimizer(cfg.method.name, stand_in, lr=cfg.resolved_lr,
                           eps=cfg.resolved_eps, weight_decay=cfg.method.weight_decay, seed=cfg.run.seed,
                           n_queries=cfg.method.n_queries, total_steps=cfg.run.steps or None,
                           fresh_closure=lambda step, index: (lambda: torch.zeros(())),
                           **dict(cfg.method.options))


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run folder was made with (``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a zotune run folder")
    return resolve_config(load_config_file(path))


def build_trainable_model(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The base model with the run's trainable set (full, LoRA or prefix) applied, in eval mode."""
    m = cfg.model
    settings = PeftSettings(lora_r=m.lora_r, lora_alpha=m.lora_alpha, num_virtual_tokens=m.prefix_tokens,
                            train_embeddings=m.train_embeddings)
    model = apply_peft(model, m.peft, settings, seed=cfg.run.seed)
    if m.device_map is None:  # a dispatched model stays where accelerate put each layer
        model = model.to(device)
    model.eval()  # no dropout: both probes of a step must evaluate the same function
    return model


def build_run_optimizer(cfg: TrainConfig, params: list[tuple[str, torch.Tensor]],
                        fresh_closure: Callable[[int, int], Callable[[], Any]] | None,
                        sync: LossSync | None = None) -> Any:
    import zotune

    return zotune.build_optimizer(cfg.method.name, params, lr=cfg.resolved_lr, eps=cfg.resolved_eps,
                                  weight_decay=cfg.method.weight_decay, seed=cfg.run.seed,
                                  n_queries=cfg.method.n_queries, total_steps=cfg.run.steps or None,
                                  fresh_closure=fresh_closure, sync=sync, **dict(cfg.method.options))


def train(cfg: TrainConfig, *, loaded: LoadedModel | None = None,
          echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one fine-tuning job into a new run folder and return its summary (also in ``summary.json``)."""
    return _Job(cfg, echo=echo).execute(loaded=loaded)


def check_job(cfg: TrainConfig) -> None:
    """Every check ``train`` makes before the model loads (options, task, data, method, device, run folder),
    without loading it: what ``zotune train --nproc`` runs before it launches the ranks."""
    _Job(cfg).validate()


def check_resume(run_dir: str | Path) -> tuple[RunFolder, TrainConfig, Path]:
    """The run folder, its config and its last checkpoint, or a ValueError saying why it cannot resume."""
    folder = RunFolder.open(run_dir)
    cfg = load_run_config(folder.path)
    summary_path = folder.path / "summary.json"
    if summary_path.is_file():
        status = folder.read_json("summary.json").get("status")
        if status in ("completed", "evaluated"):
            raise ValueError(f"{folder.path} is a {status} run: nothing to resume")
    checkpoint = latest_resume(folder.path)
    if checkpoint is None:
        raise ValueError(f"{folder.path} has no checkpoint yet (it stopped before its first one): "
                         f"start it again with `zotune train --config {folder.path / 'config.yaml'} --overwrite`")
    return folder, cfg, checkpoint


def resume(run_dir: str | Path, *, loaded: LoadedModel | None = None, progress: bool | None = None,
           echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint; the result equals an uninterrupted run."""
    folder, cfg, checkpoint = check_resume(run_dir)
    if progress is not None:
        cfg.run.progress = progress
    return _Job(cfg, echo=echo, resume_folder=folder, resume_checkpoint=checkpoint).execute(loaded=loaded)


class _Job:
    """One job's wiring: ``execute`` validates, builds, runs and summarises, in that order."""

    def __init__(self, cfg: TrainConfig, *, echo: Callable[[str], None] | None = None,
                 resume_folder: RunFolder | None = None, resume_checkpoint: Path | None = None) -> None:
        self.cfg = cfg
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.resume_folder, self.resume_checkpoint = resume_folder, resume_checkpoint
        self.ranks = RankContext()
        self.peak_memory_scope = "process"  # until _execute resets the count

    def evaluate(self, scorer: Scorer, examples: list, name: str) -> dict[str, float]:
        """Metrics of ``examples``; under data parallelism each rank scores its shard and the ranks combine."""
        d = self.cfg.data
        shard = self.ranks.shard(examples)
        if shard:
            metrics = evaluate(scorer, self.task, shard, batch_size=d.eval_batch_size,
                               max_new_tokens=d.max_new_tokens, progress=self.cfg.run.progress, desc=name)
        else:  # more ranks than examples: this rank still takes part in combining
            keys = ("em", "f1") if self.task.kind == "generation" else ("accuracy", "pred0_rate")
            metrics = {**{k: 0.0 for k in keys}, "n": 0}
        return self.ranks.combine_metrics(metrics)

    def batch_closure(self, scorer: Scorer, examples: list) -> Callable[[], Any]:
        """The loss of ``examples`` (a whole batch); under data parallelism, of this rank's shard, weighted by
        its examples (its target tokens for the LM loss) so the ranks' mean is the whole batch's loss."""
        cfg, objective = self.cfg, self.objective
        if not self.ranks.distributed:
            return lambda: scorer.loss(examples, objective, max_new_tokens=cfg.data.max_new_tokens)
        shard = self.ranks.shard(examples)
        if not shard:
            return lambda: Weighted(0.0, 0.0)
        if objective == "lm":
            weight = float(sum(len(full) - start for full, start in (scorer.encode(ex.prompt, ex.target) for ex in shard)))
        else:
            weight = float(len(shard))
        return lambda: Weighted(scorer.loss(shard, objective, max_new_tokens=cfg.data.max_new_tokens), weight)

    # --- before the model loads ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Everything that can fail on bad input: options, task, data, method, device, the run folder."""
        cfg, run_cfg = self.cfg, self.cfg.run
        self.task = resolve_task(cfg)
        self.objective = resolve_objective(cfg.data.objective, self.task.kind, self.task.default_objective)
        if run_cfg.steps == 0 and not run_cfg.zero_shot:
            raise ValueError("--steps 0 evaluates the zero-shot model only, and --no-zero-shot turns that off: "
                             "nothing to do")
        if run_cfg.steps:
            check_method(cfg)
        if run_cfg.tensorboard:
            check_tensorboard()
        if cfg.data.packing == "on":  # a model that cannot pack is refused from its config, before it loads
            reason = packing_unsupported_by_config(load_model_config(cfg.model.name))
            if reason is not None:
                raise ValueError(f"packing is not available: {reason}")
        self.device = self.ranks.device(_device(run_cfg.device))
        self.splits = prepare_data(cfg, self.task)
        if not self.splits.train and run_cfg.steps > 0:
            raise ValueError("no training examples (num_train is 0 or the data has none)")
        self.out = None
        if self.resume_folder is None:
            if self.ranks.is_main:
                self.out = run_cfg.out or default_run_name("custom" if cfg.data.is_custom else self.task.name,
                                                           cfg.model.name, cfg.model.peft)
                check_out_folder(self.out, run_cfg.overwrite)
            else:
                self.out = str(self.ranks.scratch_folder())

    def zero_shot(self, model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
        """Dev and test metrics of the untouched model, before an adapter (a prefix changes outputs) is added."""
        base_scorer = Scorer(model, tokenizer, self.cfg.data.max_length, packing=self.cfg.data.packing)
        results = {}
        if self.splits.dev:
            results["dev"] = self.evaluate(base_scorer, self.splits.dev, "zero-shot dev")
        results["test"] = self.evaluate(base_scorer, self.splits.test, "zero-shot test")
        metric = self.task.metric
        self.echo(f"zero-shot {metric}: dev {results.get('dev', {}).get(metric, float('nan')):.4f} "
                  f"test {results['test'][metric]:.4f}")
        return results

    # --- the job ---------------------------------------------------------------------------------------------

    def execute(self, *, loaded: LoadedModel | None) -> dict[str, Any]:
        self.ranks = RankContext.from_environment(self.cfg.run.device)
        try:
            return self._execute(loaded=loaded)
        finally:
            self.ranks.close()

    def _execute(self, *, loaded: LoadedModel | None) -> dict[str, Any]:
        cfg, run_cfg = self.cfg, self.cfg.run
        if self.ranks.distributed and cfg.model.device_map:
            raise ValueError("--device-map spreads one model over several devices and data parallelism gives each "
                             "rank its own device: use one or the other")
        if not self.ranks.is_main:  # rank 0 speaks for the job
            self.echo = lambda msg: None
            run_cfg.progress = False
        if run_cfg.threads:
            torch.set_num_threads(run_cfg.threads)
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.validate()
        # this run's peak, loading included, not that of an earlier job in the same process (a study runner)
        self.peak_memory_scope = "run" if reset_peak_memory(self.device) else "process"
        task, splits, metric = self.task, self.splits, self.task.metric
        loaded = loaded or load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=False, device_map=cfg.model.device_map)
        model = loaded.model if cfg.model.device_map else loaded.model.to(self.device)
        model.eval()
        summary: dict[str, Any] = {"task": task.name, "model": cfg.model.name, "method": cfg.method.name,
                                   "peft": cfg.model.peft, "objective": self.objective, "metric": metric,
                                   "status": "running", "num_train": len(splits.train), "num_dev": len(splits.dev),
                                   "num_test": len(splits.test), "steps": run_cfg.steps, "steps_done": 0,
                                   "task_source": task.source, "model_source": loaded.source,
                                   **self.ranks.describe()}
        if self.resume_folder is not None:
            state = json.loads((self.resume_checkpoint / "state.json").read_text())
            summary.update(state["extra"].get("summary", {}))  # the zero-shot results, from before the stop
        elif run_cfg.zero_shot:
            summary["zero_shot"] = self.zero_shot(model, loaded.tokenizer)
        if run_cfg.steps == 0:
            self.echo("--steps 0: the zero-shot model was evaluated; nothing trained, no checkpoint written")
            folder = RunFolder.create(self.out, overwrite=run_cfg.overwrite and self.ranks.is_main)
            self._write_config(folder)
            summary["status"] = "evaluated"
            return self._finish(summary, folder, t0, cpu0)
        model = build_trainable_model(cfg, model, self.device)
        params = trainable_parameters(model)
        summary["trainable_params"] = sum(p.numel() for _, p in params)
        if cfg.model.dtype != "float32":
            self._check_precision(params)
        if self.ranks.sync is not None:  # one broadcast makes the ranks start equal; the steps keep them so
            self.ranks.sync.broadcast_parameters(p for _, p in params)
        scorer = Scorer(model, loaded.tokenizer, cfg.data.max_length, packing=cfg.data.packing)
        summary["packed_forwards"] = scorer.packing  # which forward ran: packed rows or length groups
        optimizer = build_run_optimizer(cfg, params, self._fresh_closure(scorer), sync=self.ranks.sync)
        # the run folder is created (or reopened) only now that everything is built
        folder, seed_log, runner_state, batches = self._open_run(model, optimizer)
        best_dir = folder.path / CHECKPOINT_DIR
        meta = {"model": cfg.model.name, "task": task.name, "peft": cfg.model.peft, "method": cfg.method.name}

        def save_best(step: int) -> None:
            # step 0 is the zero-shot model: the base model as loaded, which no adapter reproduces
            save_checkpoint(None if step == 0 else model, best_dir, {**meta, "step": step})

        def dev_eval(step: int) -> dict[str, float] | None:
            return self.evaluate(scorer, splits.dev, f"dev @ {step}") if splits.dev else None

        def closure_for(indices: list[int]) -> Callable[[], Any]:
            return self.batch_closure(scorer, [splits.train[i] for i in indices])

        runner = Runner(model=model, optimizer=optimizer, batches=batches, closure_for=closure_for, folder=folder,
                        seed_log=seed_log, steps=run_cfg.steps, metric=metric, evaluate=dev_eval, save_best=save_best,
                        eval_every=run_cfg.eval_every, checkpoint_every=run_cfg.checkpoint_every,
                        max_nonfinite=run_cfg.max_nonfinite, progress=run_cfg.progress, state=runner_state,
                        agree=self.ranks.any if self.ranks.distributed else None,
                        stop_loss_ratio=run_cfg.stop_loss_ratio)
        zero_dev = summary.get("zero_shot", {}).get("dev")
        if self.resume_folder is None and zero_dev:  # the zero-shot model: step 0 of the dev curve, a candidate
            folder.log({"step": 0, "forward_passes": 0, "wall_time": time.perf_counter() - t0,
                        **{f"dev_{k}": v for k, v in zero_dev.items() if k != "n"}})
            runner.consider(0, zero_dev)
        runner.state.extra = {"summary": {k: summary[k] for k in ("zero_shot", "trainable_params") if k in summary}}
        try:
            runner.run(t0)
            self._final_evaluation(runner, summary, scorer, dev_eval, save_best, t0)
        except (RunInterrupted, KeyboardInterrupt) as exc:
            summary["status"] = "interrupted"
            summary["resume"] = f"zotune train --resume {folder.path}"
            if isinstance(exc, RunInterrupted):
                self.echo(f"{exc}; continue with: zotune train --resume {folder.path}")
            raise
        except TrainingDiverged as exc:
            summary["status"], summary["error"] = "diverged", str(exc)
            raise
        except BaseException as exc:
            summary["status"], summary["error"] = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            summary.update({
                "steps_done": runner.state.step, "forward_passes": optimizer.forward_passes,
                "nonfinite_steps": getattr(optimizer, "nonfinite_steps", None),
                "train_seconds": runner.state.train_seconds, "best_step": runner.state.best_step,
                "seed_log_bytes": seed_log.size(), **self.ranks.describe(),
            })
            self._finish(summary, folder, t0, cpu0)
        return summary

    def _check_precision(self, params: list[tuple[str, torch.Tensor]]) -> None:
        """Half-precision weights: refuse an eps that moves almost none of them, warn when many stay put."""
        from zotune.llm.precision import check_eps_for_dtype

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_eps_for_dtype(params, self.cfg.resolved_eps)
        for warning in caught:
            self.echo(f"warning: {warning.message}")

    def _fresh_closure(self, scorer: Scorer) -> Callable[[int, int], Callable[[], torch.Tensor]]:
        """A loss on a batch of its own, for any component that asks (DiZO's search does), drawn from a seed
        stream of its own so the training batches and the directions stay what they are without it."""
        train_set, cfg = self.splits.train, self.cfg

        def fresh_closure(step: int, index: int) -> Callable[[], Any]:
            indices = fresh_batch_indices(len(train_set), cfg.method.batch_size, seed=cfg.run.seed, step=step,
                                          iteration=index)
            return self.batch_closure(scorer, [train_set[i] for i in indices])

        return fresh_closure

    def _open_run(self, model: torch.nn.Module, optimizer: Any) -> tuple[RunFolder, SeedLog, RunnerState, BatchSampler]:
        """A new run folder, or the resumed one with the model, the optimizer, the data position and the logs
        put back to its last checkpoint."""
        cfg = self.cfg
        batches = BatchSampler(len(self.splits.train), cfg.method.batch_size, cfg.run.seed)
        if self.resume_folder is None:
            folder = RunFolder.create(self.out, overwrite=cfg.run.overwrite and self.ranks.is_main)
            self._write_config(folder)
            seed_log = SeedLog.create(folder.path / SEED_LOG, seed=cfg.run.seed,
                                      losses_per_step=optimizer.estimator.forward_passes_per_step(),
                                      groups=len(optimizer.param_groups), optimizer_config=optimizer.config())
            if cfg.run.tensorboard and self.ranks.is_main:
                folder.start_tensorboard()
            return folder, seed_log, RunnerState(), batches
        state = load_resume(self.resume_checkpoint, model, optimizer)
        batches.load_state_dict(state["batches"])
        if self.ranks.is_main:
            folder = self.resume_folder
            folder.truncate_metrics(state["metrics_bytes"])  # lines after the checkpoint are written again
            if cfg.run.tensorboard:  # and their TensorBoard points
                folder.start_tensorboard(resume_step=int(state["step"]))
            seed_log = SeedLog(folder.path / SEED_LOG)
            seed_log.truncate(state["seed_log_bytes"])
        else:  # the other ranks read the checkpoint and write nothing into rank 0's folder
            folder = RunFolder.create(self.ranks.scratch_folder(), overwrite=False)
            self._write_config(folder)
            best = self.resume_folder.path / CHECKPOINT_DIR
            if best.is_dir():  # copied now, before the first step: rank 0 cannot replace it before then
                shutil.copytree(best, folder.path / CHECKPOINT_DIR)
            seed_log = SeedLog.create(folder.path / SEED_LOG, seed=cfg.run.seed,
                                      losses_per_step=optimizer.estimator.forward_passes_per_step(),
                                      groups=len(optimizer.param_groups), optimizer_config=optimizer.config())
        runner_state = RunnerState(**{k: v for k, v in state.items() if k in RunnerState.__dataclass_fields__})
        self.echo(f"resuming {folder.path} at step {runner_state.step}/{cfg.run.steps}")
        return folder, seed_log, runner_state, batches

    def _final_evaluation(self, runner: Runner, summary: dict[str, Any], scorer: Scorer,
                          dev_eval: Callable[[int], dict[str, float] | None], save_best: Callable[[int], None],
                          t0: float) -> None:
        """The last dev evaluation (so the best considers the last weights), the best weights back from disk,
        the test evaluation."""
        steps, metric = self.cfg.run.steps, self.task.metric
        final_record: dict[str, Any] = {"step": steps, "forward_passes": runner.optimizer.forward_passes,
                                        "wall_time": time.perf_counter() - t0}
        result = dev_eval(steps)
        if result is not None:
            runner.consider(steps, result)
            final_record.update({f"dev_{k}": v for k, v in result.items() if k != "n"})
            runner.folder.log(final_record)
        else:  # no dev set: the last weights are the result
            save_best(steps)
            runner.state.best_step = steps
        best_step = runner.state.best_step
        if best_step == 0:
            final_test = summary["zero_shot"]["test"]  # the zero-shot model won: its test result stands
        else:
            if best_step != steps:
                restore_best(runner.model, runner.folder.path / CHECKPOINT_DIR)  # from disk, not a copy in memory
            final_test = self.evaluate(scorer, self.splits.test, "test")
        summary["final"] = {"dev": {metric: runner.state.best_metric} if self.splits.dev else None, "test": final_test}
        summary["status"] = "completed"
        zs = summary.get("zero_shot", {}).get("test", {}).get(metric)
        self.echo(f"test {metric}: zero-shot {zs if zs is None else f'{zs:.4f}'} -> fine-tuned "
                  f"{final_test[metric]:.4f} (best dev step {best_step}, {steps} steps)")

    def _write_config(self, folder: RunFolder) -> None:
        """The resolved config (absolute paths, the objective and the learning rate and eps chosen), which
        ``--resume``, ``zotune replay`` and ``zotune eval`` rebuild the run from."""
        cfg = self.cfg.with_absolute_paths()
        cfg.data.objective = self.objective
        folder.write_config(cfg.to_dict())

    def _finish(self, summary: dict[str, Any], folder: RunFolder, t0: float, cpu0: float) -> dict[str, Any]:
        if summary["status"] == "running":
            summary["status"] = "failed"
        summary["wall_seconds"] = time.perf_counter() - t0
        # CPU seconds of this process: on a shared machine, cpu_seconds / threads estimates the unloaded wall time
        summary["cpu_seconds"] = time.process_time() - cpu0
        summary["threads"] = torch.get_num_threads()
        summary["peak_memory_mb"] = peak_memory_mb(self.device)
        summary["peak_memory_scope"] = self.peak_memory_scope  # "process": since the process started
        summary["run_folder"] = str(folder.path)
        folder.close()  # the TensorBoard event file, if any
        folder.write_json("summary.json", summary)
        try:
            plot_run(folder.read_metrics(), folder.path / "curves.png", summary["metric"],
                     title=f"{summary['task']} / {summary['model']} / {summary['method']}-{summary['peft']}")
        except Exception as exc:  # a plot must never hide the run's result
            self.echo(f"warning: could not draw the plot: {exc}")
        return summary
