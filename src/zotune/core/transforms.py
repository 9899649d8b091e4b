"""Transforms: how the implicit gradient becomes an update.

For every parameter the optimizer applies one affine update in the fused pass,

    theta <- decay * theta + scale * sum_q c_q z_q,

and transforms build ``(decay, scale)`` as an :class:`UpdateRule`, starting from ``(1, 1)``:

* :class:`LearningRate`: ``scale *= -lr`` with ``lr`` read from the parameter's group at every step, so
  ``torch.optim.lr_scheduler`` schedules work unchanged.
* :class:`DecoupledWeightDecay`: ``decay *= 1 - lr * weight_decay`` for parameters the mask selects (by
  default tensors with 2 or more dimensions: weight matrices and embeddings, not biases or norm gains).

Together that is MeZO's update theta <- theta - lr * (g_hat + wd * theta). A transform may also act after
the update (:meth:`Transform.after_step`, e.g. DiZO's projection); one that keeps parameter-sized state
must say so in its name and docstring, because that breaks ZO's inference-level memory.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from zotune.core.optimizer import ZOOptimizer


@dataclass(frozen=True)
class UpdateRule:
    """theta <- decay * theta + scale * g_hat."""

    decay: float = 1.0
    scale: float = 1.0


class Transform(ABC):
    """One stage of the update; the default methods do nothing."""

    def bind(self, optimizer: ZOOptimizer) -> None:
        """Runs once, at the end of the optimizer's constructor, before any step: the only moment a
        transform can see the starting weights (DiZO keeps them as its anchor)."""
        del optimizer

    def rule(self, group: dict[str, Any], param: torch.Tensor, rule: UpdateRule) -> UpdateRule:
        """Refine the update rule of ``param`` (a member of ``group``) for this step."""
        del group, param
        return rule

    def after_step(self, optimizer: ZOOptimizer, closure: Callable[[], Any]) -> None:
        """Runs once after every update (the step counter already advanced)."""
        del optimizer, closure

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class LearningRate(Transform):
    """``scale *= -group['lr']``: plain ZO-SGD with the group's (possibly scheduled) learning rate."""

    def rule(self, group: dict[str, Any], param: torch.Tensor, rule: UpdateRule) -> UpdateRule:
        return UpdateRule(rule.decay, rule.scale * -float(group["lr"]))

    def __repr__(self) -> str:
        return "LearningRate()"


def matrices_only(param: torch.Tensor) -> bool:
    """The default decay mask: tensors with two or more dimensions."""
    return param.dim() >= 2


class DecoupledWeightDecay(Transform):
    """``decay *= 1 - lr * group['weight_decay']`` where ``mask(param)`` is true.

    The mask looks at the tensor, never at its name: name substrings ("bias", "layer_norm") differ between
    model families and silently decay the wrong tensors.
    """

    def __init__(self, mask: Callable[[torch.Tensor], bool] = matrices_only) -> None:
        self.mask = mask

    def rule(self, group: dict[str, Any], param: torch.Tensor, rule: UpdateRule) -> UpdateRule:
        weight_decay = float(group.get("weight_decay", 0.0))
        if weight_decay == 0.0 or not self.mask(param):
            return rule
        return UpdateRule(rule.decay * (1.0 - float(group["lr"]) * weight_decay), rule.scale)

    def __repr__(self) -> str:
        return f"DecoupledWeightDecay(mask={getattr(self.mask, '__name__', self.mask)!r})"


def validate_hyperparameters(lr: float, weight_decay: float) -> None:
    """Raise ValueError for a learning rate or weight decay no optimizer can use."""
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
