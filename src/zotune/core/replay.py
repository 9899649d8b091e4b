"""Replay: rebuild fine-tuned weights from the base weights and a list of step records.

A ZO run's whole update is ``(step, seed, coefficients, lrs, weight_decays)`` per step (a few dozen bytes),
because every direction z can be regenerated from the seed. Given an optimizer built exactly like the one
that trained (same method options, same parameters in the same groups, on the *base* weights), replaying
the records reproduces the trained weights up to floating-point rounding of the fused passes.
"""

from __future__ import annotations

from collections.abc import Iterable

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
