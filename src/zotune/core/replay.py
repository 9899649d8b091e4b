"""Replay: rebuild fine-tuned weights from the base weights and a list of step records.

A ZO run's whole update is ``(step, seed, coefficients, lrs, weight_decays)`` per step (a few dozen bytes),
because every direction z can be regenerated from the seed. Given an optimizer built exactly like the one
that trained (same method options, same parameters in the same groups, on the *base* weights), replaying
the records reproduces the trained weights up to floating-point rounding of the fused passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from zotune.core.optimizer import StepRecord, ZOOptimizer


def replay(optimizer: ZOOptimizer, records: Iterable[StepRecord]) -> int:
    """Apply ``records`` in order to ``optimizer``'s parameters; returns how many were applied.

    The whole transform chain runs as in training (learning rate, weight decay, clips, momentum rebuilt
    from past records, KerZOO's averaging). An optimizer with a part whose effect a record does not hold
    (DiZO's projection acts through forward passes) is refused before anything is changed.
    """
    blocked = optimizer.not_replayable()
    if blocked:
        raise ValueError(
            f"cannot replay this run: {', '.join(blocked)} changes the weights through forward passes that a "
            "step record does not hold; only its training run can reproduce it"
        )
    count = 0
    for record in records:
        optimizer.apply_record(record)
        count += 1
    optimizer.step_count = max(optimizer.step_count, count)
    return count


class LoggedStep(NamedTuple):
    """One training step as a seed log holds it: the probe losses in call order and the hyperparameters
    (one learning rate and weight decay per param group) the step used."""

    step: int
    losses: tuple[float, ...]
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]


def replay_losses(optimizer: ZOOptimizer, steps: Iterable[LoggedStep]) -> int:
    """Re-run training steps on ``optimizer`` (built like the training one, on the base weights), feeding each
    step its logged probe losses instead of forward passes; returns how many steps ran.

    Every number a step computes (coefficients, KerZOO's kernel weights, clips, averaging, the fused
    restore-and-update) depends on the weights only through these losses, so the same code path gives
    the trained weights bit for bit (with the same torch build and thread count), where :func:`replay`
    agrees up to the rounding of the fused passes. It costs the step's passes over the weights, no
    forward pass. Parts acting through forward passes the log does not hold (DiZO) are refused.
    """
    blocked = optimizer.not_replayable()
    if blocked:
        raise ValueError(
            f"cannot replay this run: {', '.join(blocked)} changes the weights through forward passes that the "
            "seed log does not hold; only its training run can reproduce it"
        )
    count = 0
    for logged in steps:
        if logged.step != optimizer.step_count:
            raise ValueError(f"seed log out of order: step {logged.step} where step {optimizer.step_count} was due")
        if len(logged.lrs) != len(optimizer.param_groups):
            raise ValueError("the seed log and the optimizer have different numbers of param groups")
        for group, lr, wd in zip(optimizer.param_groups, logged.lrs, logged.weight_decays, strict=True):
            group["lr"], group["weight_decay"] = lr, wd
        feed = iter(logged.losses)

        def closure() -> float:
            try:
                return next(feed)
            except StopIteration:
                raise ValueError(f"step {logged.step} asks for more losses than the seed log holds") from None

        optimizer.step(closure)
        if next(feed, None) is not None:
            raise ValueError(f"step {logged.step} used fewer losses than the seed log holds: a different method?")
        count += 1
    return count
