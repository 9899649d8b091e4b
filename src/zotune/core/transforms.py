"""Transforms: how the implicit gradient becomes an update, as a chain of small stateful stages.

In the spirit of optax (``init`` / ``update`` with their own state, composed by chaining), every
transform sees, for each trainable tensor, the update built so far and returns the next one. An update
is held lazily as a :class:`TensorUpdate`,

    theta <- decay * theta + sum_k alpha_k * z(direction_k) + dense,

so stages that only rescale (the learning rate, weight decay, a momentum rebuilt from past seeds) never
materialise anything, and stages that need the numbers (a norm clip, Adam's second moment) ask the step
for a dense copy in a scratch buffer of one tensor's size (:meth:`StepContext.materialize`). The chain
starts from the step's implicit gradient g_hat_l = sum_q c_q w_{q,l} z_{q,l} and runs in two stages:

* ``stage = "gradient"`` transforms act on g_hat before the learning rate (a clip, momentum, Adam);
* then :class:`LearningRate` (``* -lr``, read from the param group at every step, so
  ``torch.optim.lr_scheduler`` works) and :class:`DecoupledWeightDecay` (``decay *= 1 - lr wd``);
* ``stage = "update"`` transforms act on the step after the learning rate (KerZOO's two-sequence
  averaging) or after the whole update (DiZO's projection, :meth:`Transform.after_step`).

A transform may keep state: scalars in its own :meth:`Transform.state_dict`, and parameter-sized tensors
in the optimizer's ``state[param]`` under ``"<transform name>.<key>"`` (:meth:`Transform.buffer`), so
``torch.optim`` checkpoints carry them and :meth:`ZOOptimizer.state_bytes` counts them in memory reports.
A transform that holds such a buffer breaks ZO's inference-level memory, and says so in its docstring.

A transform may also move the parameters to another probe point before the estimator's queries
(:meth:`Transform.begin_step`; KerZOO probes at y = x - d / beta instead of the stored x). Its ``update``
then returns the step relative to the parameters as they are (at the probe point), and
:meth:`Transform.cancel_step` moves them back if the step is dropped (a non-finite loss).
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from zotune.core.samplers import Direction

if TYPE_CHECKING:  # pragma: no cover
    from zotune.core.optimizer import StepContext, Trainable, ZOOptimizer

STAGES = ("gradient", "update")


@dataclass
class TensorUpdate:
    """One tensor's update, lazily: ``theta <- decay * theta + sum_k alpha_k z(direction_k) + dense``.

    ``dense`` (if any) is a buffer owned by the step (a scratch of one tensor's size): a transform may
    write into it in place, but must not keep it after its ``update`` returns.
    """

    terms: list[tuple[Direction, float]] = field(default_factory=list)
    dense: torch.Tensor | None = None
    decay: float = 1.0

    def scaled(self, factor: float) -> TensorUpdate:
        """The update times ``factor`` (the decay is not a part of the step and stays)."""
        if self.dense is not None:
            self.dense.mul_(factor)
        return TensorUpdate([(d, a * factor) for d, a in self.terms], self.dense, self.decay)

    def is_zero(self) -> bool:
        return self.dense is None and all(a == 0.0 for _, a in self.terms)


class Transform(ABC):
    """One stage of the update chain; every hook does nothing by default.

    Attributes:
        name: the prefix of its buffers in ``optimizer.state[param]`` (unique within an optimizer).
        stage: ``"gradient"`` (before the learning rate) or ``"update"`` (after it).
        replayable: False if the transform's effect is not a function of the step records (DiZO's
            forward-pass search): :func:`zotune.core.replay.replay` then refuses the optimizer.
        period: steps between the transform's periodic forward-pass work (0: it has none); benchmarks
            time :meth:`periodic_work` and amortise it over the period.
        keeps_terms: True if ``update`` returns an update still held as seeded terms when given one (no
            dense part); a transform that rebuilds past steps from their seeds must come before any
            transform that does not.
        materializes: True if ``update`` sums the estimate's terms into a dense buffer
            (:meth:`StepContext.materialize`): the optimizer then announces those sums to the sampler, so
            their scalars reach an accelerator in one copy per step.
    """

    name: str = "transform"
    stage: str = "update"
    replayable: bool = True
    period: int = 0
    keeps_terms: bool = False
    materializes: bool = False

    def config(self) -> dict[str, Any]:
        """The transform's settings (saved in the optimizer's state dict, compared on load)."""
        return {}

    def bind(self, optimizer: ZOOptimizer) -> None:
        """``init``: runs once, at the end of the optimizer's constructor, before any step (the only
        moment a transform can see the starting weights)."""
        del optimizer

    def begin_step(self, ctx: StepContext) -> None:
        """Before the estimator's queries (a transform may move the parameters to its probe point)."""
        del ctx

    def cancel_step(self, ctx: StepContext) -> None:
        """The step is dropped (non-finite loss): undo what :meth:`begin_step` did to the parameters."""
        del ctx

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        """The next update of one tensor; ``ctx.coefficients`` holds the step's coefficients."""
        del ctx, item
        return update

    def end_step(self, ctx: StepContext) -> None:
        """After every tensor was updated (scalar state: counters, seed histories)."""
        del ctx

    def after_step(self, optimizer: ZOOptimizer, closure: Callable[[], Any]) -> None:
        """After the update, with the closure (the step counter already advanced)."""
        del optimizer, closure

    def periodic_work(self, optimizer: ZOOptimizer, closure: Callable[[], Any]) -> None:
        """One instance of the periodic work (forward passes), leaving the weights as they were."""
        del optimizer, closure

    def held_bytes(self) -> int:
        """Bytes of parameter-sized state the transform holds outside ``optimizer.state`` (memory reports)."""
        return 0

    def buffer(self, optimizer: ZOOptimizer, param: torch.Tensor, key: str, init: Callable[[], torch.Tensor]) -> torch.Tensor:
        """This transform's parameter-sized buffer ``key`` for ``param`` (created with ``init()`` on first use)."""
        state = optimizer.state[param]
        full = f"{self.name}.{key}"
        if full not in state:
            state[full] = init()
        return state[full]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class LearningRate(Transform):
    """``update *= -group['lr']``: ZO-SGD with the group's (possibly scheduled) learning rate."""

    name = "lr"
    keeps_terms = True

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        return update.scaled(-float(ctx.group(item)["lr"]))

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

    name = "weight_decay"
    keeps_terms = True

    def __init__(self, mask: Callable[[torch.Tensor], bool] = matrices_only) -> None:
        self.mask = mask

    def config(self) -> dict[str, Any]:
        return {"mask": callable_name(self.mask)}

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        group = ctx.group(item)
        weight_decay = float(group.get("weight_decay", 0.0))
        if weight_decay == 0.0 or not self.mask(item.param):
            return update
        update.decay *= 1.0 - float(group["lr"]) * weight_decay
        return update

    def __repr__(self) -> str:
        return f"DecoupledWeightDecay(mask={callable_name(self.mask)!r})"


def callable_name(fn: Any) -> str | None:
    """A stable, comparable name for a callable option (configs hold names, not objects)."""
    if fn is None:
        return None
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}" if module else name


def validate_hyperparameters(lr: float, weight_decay: float) -> None:
    """Raise ValueError for a learning rate or weight decay no optimizer can use."""
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
