"""The runner: the training loop as a small object that owns the step, the data position, the best-so-far
and the checkpoints, and knows no algorithm.

Per step, in this order (a resumed run repeats it exactly, so resume equals an uninterrupted run)::

    batch = batches.next()                     data position
    loss = optimizer.step(closure(batch))      the ZO step (any zotune optimizer)
    seed log <- the step's probe losses        a run is its seed log
    dev evaluation every eval_every steps      -> best-so-far, best weights on disk
    metrics.jsonl <- the step's record
    checkpoint every checkpoint_every steps, and on SIGINT / SIGTERM (then stop)

Evaluation and the best checkpoint are hooks (``evaluate``, ``save_best``), so the runner runs any model
and objective; the optimizer is only asked for ``step``, ``state_dict`` and its counters.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zotune.train.checkpoint import save_resume
from zotune.train.run_folder import RunFolder
from zotune.train.seedlog import SeedLog

__all__ = [
    "LOSS_SPAN",
    "LOSS_WINDOWS",
    "BatchSampler",
    "RunInterrupted",
    "Runner",
    "RunnerState",
    "TrainingDiverged",
    "loss_divergence",
    "loss_window_size",
    "stop_on_signals",
]

# The training loss of a run is watched as LOSS_WINDOWS window means (the convergence study reports it so too);
# the divergence rule compares the latest LOSS_SPAN windows (a tenth of the run) with the first one.
LOSS_WINDOWS = 100
LOSS_SPAN = 10


class TrainingDiverged(RuntimeError):
    """Raised after ``max_nonfinite`` non-finite losses in a row, or when the training loss meets the
    divergence rule (:func:`loss_divergence`); the last good checkpoint is kept.

    ``reason`` says what happened and at which step, without the advice or the checkpoint's path, for callers
    (the bench runner) whose run folder does not outlive them."""

    def __init__(self, reason: str, advice: str, checkpoint: Path) -> None:
        super().__init__(f"{reason}; stopped. {advice} The best checkpoint is in {checkpoint}")
        self.reason, self.advice, self.checkpoint = reason, advice, checkpoint

    def __reduce__(self) -> tuple[type, tuple[str, str, Path]]:
        # pickled with its own arguments (an exception's default passes only the message back)
        return type(self), (self.reason, self.advice, self.checkpoint)


def loss_window_size(steps: int, windows: int = LOSS_WINDOWS) -> int:
    """Steps per window of a ``steps``-step run cut into ``windows`` window means (the last may be shorter)."""
    return max(1, math.ceil(steps / windows))


def loss_divergence(window_means: Sequence[float | None], ratio: float, span: int = LOSS_SPAN) -> int | None:
    """The first count of windows k >= ``span`` at which the mean of windows k-span+1..k is above ``ratio``
    times the first window's mean, or None if it never is. Windows without a finite loss (None) are left out.

    With 100 windows: the mean training loss of the latest tenth of the run against that of its first
    hundredth, which is close to the untrained model's. A diverged ZO run sits well above its start (on mr
    about 2x, where healthy runs end below it), so a rule met there marks an lr that cannot be the one kept."""
    first = window_means[0] if window_means else None
    if first is None or not math.isfinite(first):
        return None
    for k in range(span, len(window_means) + 1):
        recent = [m for m in window_means[k - span:k] if m is not None and math.isfinite(m)]
        if recent and statistics.fmean(recent) > ratio * first:
            return k
    return None


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class BatchSampler:
    """Epoch-wise shuffled batches from a seeded generator of its own, so no other code's RNG use
    changes which examples a step sees. Its position (epoch, pos) is all a checkpoint needs."""

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

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.order = np.random.RandomState(self.seed + self.epoch).permutation(self.n)  # as next() drew it


@dataclass
class RunnerState:
    """What the runner carries from step to step (saved in every checkpoint)."""

    step: int = 0
    best_metric: float | None = None  # None: nothing evaluated yet
    best_step: int | None = None
    ema: float | None = None  # smoothed loss for the progress bar
    consecutive_bad: int = 0
    train_seconds: float = 0.0
    metrics_bytes: int = 0
    seed_log_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's (e.g. zero-shot results)
    # the training loss as window means (the divergence rule's input): finished windows, and the finite
    # losses and step count of the window under way
    loss_windows: list[float | None] = field(default_factory=list)
    window_losses: list[float] = field(default_factory=list)
    window_steps: int = 0


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[_StopFlag]:
    """While inside, the first SIGINT or SIGTERM only sets ``flag.signum`` (the runner saves and stops after
    the current step); a second SIGINT interrupts at once (KeyboardInterrupt). Off the main thread,
    signals are left alone."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Runner:
    """Runs ``optimizer`` for ``steps`` steps with checkpoints, evaluation hooks, logs and signal handling.

    Args:
        model: the module whose ``requires_grad`` tensors train (checkpointed by name).
        optimizer: a zotune optimizer.
        batches: the data position.
        closure_for: batch indices -> the step's closure (forward only, deterministic).
        folder: the run folder (metrics, seed log, checkpoints).
        steps: the total number of steps.
        evaluate: step -> dev metrics (or None without a dev set); called every ``eval_every`` steps.
        metric: the key of the metrics that picks the best.
        save_best: called with the step whenever the dev metric improves (ties keep the earlier step).
        state: a resumed run's state (``None``: a new run).
        stop_loss_ratio: stop as diverged once :func:`loss_divergence` holds for the run's loss windows at
            this ratio (``None``: never).
        agree: under data parallelism, ``flag -> flag on any rank``: every rank stops after the same step
            when any of them got a signal (a rank that stopped alone would leave the others waiting).
    """

    def __init__(self, *, model: nn.Module, optimizer: Any, batches: BatchSampler | None,
                 closure_for: Callable[[list[int]], Callable[[], torch.Tensor]], folder: RunFolder, seed_log: SeedLog,
                 steps: int, metric: str, evaluate: Callable[[int], dict[str, float] | None],
                 save_best: Callable[[int], None], eval_every: int = 0, checkpoint_every: int = 0,
                 max_nonfinite: int = 5, progress: bool = True, state: RunnerState | None = None,
                 agree: Callable[[bool], bool] | None = None, stop_loss_ratio: float | None = None) -> None:
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.closure_for, self.folder, self.seed_log = closure_for, folder, seed_log
        self.steps, self.metric, self.evaluate, self.save_best = steps, metric, evaluate, save_best
        self.eval_every, self.checkpoint_every, self.max_nonfinite = eval_every, checkpoint_every, max_nonfinite
        self.progress = progress
        self.state = state or RunnerState()
        self.agree = agree
        self.stop_loss_ratio = stop_loss_ratio

    # --- best-so-far ----------------------------------------------------------------------------------

    def consider(self, step: int, result: dict[str, float] | None) -> bool:
        """Update the best-so-far with a dev result; True if it improved (and ``save_best`` ran)."""
        if result is None:
            return False
        value = result[self.metric]
        if self.state.best_metric is None or value > self.state.best_metric:  # ties keep the earlier step
            self.save_best(step)
            self.state.best_metric, self.state.best_step = value, step
            return True
        return False

    # --- checkpoints ----------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Save the resumable state at the current step (weights, optimizer, data position, logs' lengths)."""
        self.folder.flush()  # TensorBoard's points up to here reach the disk before the checkpoint counts them
        self.state.metrics_bytes = self.folder.metrics_size()
        self.state.seed_log_bytes = self.seed_log.size()
        payload = {**asdict(self.state), "batches": self.batches.state_dict() if self.batches else None}
        save_resume(self.folder.path, self.state.step, self.model, self.optimizer, payload)

    # --- the loop -------------------------------------------------------------------------------------

    def _one_step(self) -> dict[str, Any]:
        step = self.state.step + 1
        closure = self.closure_for(self.batches.next())
        loss = float(self.optimizer.step(closure))
        self.state.step = step
        groups = self.optimizer.param_groups
        self.seed_log.append(self.optimizer.step_count - 1, self.optimizer.last_step_losses,
                             tuple(float(g["lr"]) for g in groups), tuple(float(g["weight_decay"]) for g in groups))
        record: dict[str, Any] = {"step": step, "loss": loss, "lr": groups[0]["lr"],
                                  "forward_passes": self.optimizer.forward_passes,
                                  "random_numbers": self.optimizer.last_step_random_numbers}
        if math.isfinite(loss):
            self.state.consecutive_bad = 0
            self.state.ema = loss if self.state.ema is None else 0.95 * self.state.ema + 0.05 * loss
        else:
            self.state.consecutive_bad += 1
            record["nonfinite"] = True
        self._track_loss(loss)
        return record

    def _track_loss(self, loss: float) -> None:
        state = self.state
        if math.isfinite(loss):
            state.window_losses.append(loss)
        state.window_steps += 1
        if state.window_steps == loss_window_size(self.steps) or state.step == self.steps:
            state.loss_windows.append(statistics.fmean(state.window_losses) if state.window_losses else None)
            state.window_losses, state.window_steps = [], 0

    def _loss_diverged(self) -> str | None:
        """The reason to stop if the divergence rule holds at the window just finished, else None."""
        windows = self.state.loss_windows
        if self.stop_loss_ratio is None or self.state.window_steps or len(windows) < LOSS_SPAN:
            return None  # checked once per finished window
        if loss_divergence(windows, self.stop_loss_ratio) is None:
            return None
        recent = [m for m in windows[-LOSS_SPAN:] if m is not None]
        return (f"training loss diverged: {statistics.fmean(recent):.4g} over the last {LOSS_SPAN} of "
                f"{LOSS_WINDOWS} windows, above {self.stop_loss_ratio:g}x the first window's {windows[0]:.4g}")

    def run(self, started: float) -> None:
        """Train until ``steps`` (from the state's step); ``started`` is the ``perf_counter`` the wall time
        in the metrics counts from. Raises :class:`RunInterrupted` after a signal (a checkpoint saved),
        :class:`TrainingDiverged` after too many non-finite losses."""
        bar = tqdm(total=self.steps, initial=self.state.step, desc="train", disable=not self.progress,
                   dynamic_ncols=True)
        segment_start = time.perf_counter()
        base_seconds = self.state.train_seconds
        try:
            with stop_on_signals() as stop:
                while self.state.step < self.steps:
                    record = self._one_step()
                    step = self.state.step
                    record["wall_time"] = time.perf_counter() - started
                    if self.state.consecutive_bad >= self.max_nonfinite:
                        self.folder.log(record)
                        raise TrainingDiverged(f"{self.state.consecutive_bad} non-finite losses in a row (step {step})",
                                               "Try a smaller --lr or --eps.", self.folder.path / "checkpoint")
                    reason = self._loss_diverged()
                    if reason is not None:
                        self.folder.log(record)
                        raise TrainingDiverged(f"{reason} (step {step})", "Try a smaller --lr.",
                                               self.folder.path / "checkpoint")
                    if self.eval_every and step % self.eval_every == 0 and step != self.steps:
                        result = self.evaluate(step)
                        self.consider(step, result)
                        if result is not None:
                            record.update({f"dev_{k}": v for k, v in result.items() if k != "n"})
                    self.folder.log(record)
                    self.state.train_seconds = base_seconds + time.perf_counter() - segment_start
                    bar.update(1)
                    postfix = {"loss": f"{self.state.ema:.4f}" if self.state.ema is not None else "nan"}
                    if self.state.best_metric is not None:
                        postfix[f"best_{self.metric[:3]}"] = f"{self.state.best_metric:.3f}"
                    bar.set_postfix(postfix)
                    if self.agree is not None and self.agree(stop.signum is not None) and stop.signum is None:
                        stop.signum = signal.SIGTERM  # another rank was told to stop
                    if stop.signum is not None or step == self.steps or (
                            self.checkpoint_every and step % self.checkpoint_every == 0):
                        self.checkpoint()
                    if stop.signum is not None:
                        name = signal.Signals(stop.signum).name
                        raise RunInterrupted(stop.signum, step, f"{name} at step {step}/{self.steps}: checkpoint saved")
        finally:
            bar.close()
