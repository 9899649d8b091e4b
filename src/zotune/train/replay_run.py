"""Rebuild a run's fine-tuned weights from the base model, its config and its seed log alone.

``zotune replay RUN_DIR --out DIR`` loads the base model, applies the run's trainable set (the adapter is
initialised from the run's seed), builds the run's optimizer and feeds it the logged probe losses
(:func:`zotune.core.replay.replay_losses`): no data, no forward pass, the weights of any step bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from zotune.core.replay import replay_losses
from zotune.llm.models import load_model
from zotune.llm.peft import trainable_parameters
from zotune.train.checkpoint import save_checkpoint
from zotune.train.loop import build_run_optimizer, build_trainable_model, check_method, load_run_config
from zotune.train.run_folder import RunFolder, inspect_folder
from zotune.train.seedlog import SEED_LOG, SeedLog

__all__ = ["replay_run", "target_step"]


def target_step(folder: RunFolder, step: str | int | None) -> int:
    """The step to rebuild: ``best`` (the run's best-dev step, what its ``checkpoint/`` holds), ``last`` (every
    logged step) or a number."""
    log = SeedLog(folder.path / SEED_LOG)
    logged = sum(1 for _ in log.read())
    if step in (None, "best"):
        summary_path = folder.path / "summary.json"
        best = json.loads(summary_path.read_text()).get("best_step") if summary_path.is_file() else None
        if best is None:
            raise ValueError(f"{folder.path} records no best step (the run did not finish): pass --step last or a number")
        return int(best)
    if step == "last":
        return logged
    try:
        wanted = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"--step must be best, last or a step number, got {step!r}") from None
    if not 0 <= wanted <= logged:
        raise ValueError(f"--step {wanted}: the seed log holds steps 0 to {logged}")
    return wanted


def replay_run(run_dir: str | Path, out: str | Path, *, step: str | int | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Write the weights of ``step`` of the run in ``run_dir`` to ``out`` (a new or empty folder) as a
    checkpoint ``zotune eval --checkpoint`` and ``load_checkpoint`` read; returns what was done."""
    folder = RunFolder.open(run_dir)
    out = Path(out)
    if inspect_folder(out).kind not in ("absent", "empty"):
        raise FileExistsError(f"--out {out} exists and is not empty; replay writes only into a new or empty folder")
    if not (folder.path / SEED_LOG).is_file():
        raise FileNotFoundError(f"{folder.path} has no {SEED_LOG}")
    cfg = load_run_config(folder.path)
    blocked = check_method(cfg).not_replayable()
    if blocked:  # before the model loads
        raise ValueError(f"cannot replay this run: {', '.join(blocked)} changes the weights through forward passes "
                         "that the seed log does not hold")
    target = target_step(folder, step)
    log = SeedLog(folder.path / SEED_LOG)
    loaded = load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=not progress)
    model = build_trainable_model(cfg, loaded.model, torch.device("cpu"))
    optimizer = build_run_optimizer(cfg, trainable_parameters(model), None)
    if json.loads(json.dumps(optimizer.config())) != log.header["optimizer"]:
        raise ValueError(f"the optimizer built from {folder.path / 'config.yaml'} differs from the one that wrote "
                         "the seed log (a different zotune version?)")
    steps = tqdm(log.read(until_step=target), total=target, desc="replay", disable=not progress)
    done = replay_losses(optimizer, steps)
    if done != target:
        raise ValueError(f"the seed log ended after {done} steps, before step {target}")
    meta = {"model": cfg.model.name, "task": "custom" if cfg.data.is_custom else cfg.data.task, "peft": cfg.model.peft,
            "method": cfg.method.name, "step": target, "replayed_from": str(folder.path.resolve())}
    save_checkpoint(model if target > 0 else None, out, meta)
    return {"run": str(folder.path), "out": str(out), "step": target, "seed_log_bytes": log.size()}
