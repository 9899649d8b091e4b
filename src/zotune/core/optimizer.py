"""``ZOOptimizer``: a ``torch.optim.Optimizer`` that estimates gradients from forward passes only.

One step with the default parts (MeZO), for every trainable tensor theta and a direction z regenerated
from the key ``(seed, step, query, parameter)``:

    pass 1   theta <- theta + eps z                      L+ = closure()
    pass 2   theta <- theta - 2 eps z                    L- = closure()
             g = (L+ - L-) / (2 eps)
    pass 3   theta <- (1 - lr wd) (theta + eps z) - lr g z          (restore and update fused)

MeZO's reference code restores theta in a pass of its own and then updates it (four regenerations of z,
each allocating a new tensor); here the restore is folded into the update and every pass is in place.
Nothing parameter-sized is allocated, and z is never stored: a step is recorded as a
:class:`StepRecord` ``(step, seed, coefficients, lrs, weight_decays)`` from which the update can be
replayed exactly (:meth:`ZOOptimizer.apply_record`).

The three parts are pluggable: the sampler (where z comes from), the estimator (which losses to query and
the coefficients c_q of g_hat = sum_q c_q z_q) and the transforms (learning rate, weight decay, DiZO's
projection, ...). Named methods such as :func:`zotune.mezo` are short compositions of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch

from zotune.core.estimators import Estimate, Estimator, TwoPointEstimator
from zotune.core.samplers import Direction, Sampler, make_sampler
from zotune.core.seeds import name_id
from zotune.core.transforms import (
    DecoupledWeightDecay,
    LearningRate,
    Transform,
    UpdateRule,
    validate_hyperparameters,
)

Closure = Callable[[], Any]


class StepRecord(NamedTuple):
    """The whole update of one step, in a few bytes: theta <- decay theta - lr sum_q c_q z_q."""

    step: int
    seed: int
    coefficients: tuple[float, ...]
    lrs: tuple[float, ...]  # one per param group, as used in this step
    weight_decays: tuple[float, ...]  # one per param group


class _Trainable(NamedTuple):
    group_index: int
    param: torch.Tensor
    param_id: int


class ZOOptimizer(torch.optim.Optimizer):
    """Zeroth-order optimizer: ``step(closure)`` runs forward passes only and updates in place.

    Args:
        params: tensors, ``(name, tensor)`` pairs (then z is keyed by the name, so it does not depend on the
            order the parameters are passed in), or param-group dicts.
        lr: learning rate (per group; ``torch.optim.lr_scheduler`` works).
        estimator: the gradient estimator; default :class:`TwoPointEstimator` with ``eps=1e-3``.
        sampler: a registered sampler name or a :class:`Sampler`; default counter-based ``"gaussian"``.
        transforms: the update transforms; default ``[LearningRate(), DecoupledWeightDecay()]``.
        weight_decay: decoupled weight decay (per group), applied where the decay transform's mask says.
        seed: the base seed every direction is derived from.
        record_trajectory: keep every :class:`StepRecord` in ``self.trajectory`` (a few bytes per step).

    Example:
        >>> opt = ZOOptimizer(model.named_parameters(), lr=1e-6)
        >>> def closure():
        ...     return loss_fn(model(x), y)           # called under torch.no_grad()
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-6,
        *,
        estimator: Estimator | None = None,
        sampler: str | Sampler = "gaussian",
        transforms: Sequence[Transform] | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
        record_trajectory: bool = False,
    ) -> None:
        validate_hyperparameters(lr, weight_decay)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        params = list(params)
        if not params:
            raise ValueError("ZOOptimizer got an empty parameter list: pass the tensors to train")
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        for group in self.param_groups:
            validate_hyperparameters(group["lr"], group["weight_decay"])
        if not any(len(g["params"]) for g in self.param_groups):
            raise ValueError("ZOOptimizer got param groups with no tensors in them")
        self.estimator = estimator if estimator is not None else TwoPointEstimator()
        self.sampler = make_sampler(sampler)
        self.transforms: list[Transform] = (
            list(transforms) if transforms is not None else [LearningRate(), DecoupledWeightDecay()]
        )
        self.base_seed = seed
        self.step_count = 0
        self.forward_passes = 0
        self.nonfinite_steps = 0
        self.random_numbers_drawn = 0
        self.last_step_random_numbers = 0
        self.last_record: StepRecord | None = None
        self.trajectory: list[StepRecord] | None = [] if record_trajectory else None
        self._param_ids = self._assign_param_ids()
        for transform in self.transforms:
            transform.bind(self)  # last: a transform may read the parameters as they are before step 0

    # --- parameters -----------------------------------------------------------------------------------

    def _assign_param_ids(self) -> list[list[int]]:
        """A stable id per parameter: a hash of its name if names were given, else its global position."""
        ids: list[list[int]] = []
        position = 0
        seen: set[int] = set()
        for group in self.param_groups:
            names = group.get("param_names")
            group_ids = []
            for i, _ in enumerate(group["params"]):
                pid = name_id(names[i]) if names else position
                if pid in seen:
                    raise ValueError(f"two parameters share the id {pid}; parameter names must be unique")
                seen.add(pid)
                group_ids.append(pid)
                position += 1
            ids.append(group_ids)
        return ids

    def trainable(self) -> list[_Trainable]:
        """The tensors this step perturbs: every parameter with ``requires_grad`` (re-read each step)."""
        return [
            _Trainable(gi, p, self._param_ids[gi][pi])
            for gi, group in enumerate(self.param_groups)
            for pi, p in enumerate(group["params"])
            if p.requires_grad
        ]

    def direction(self, query: int, param_id: int, step: int | None = None) -> Direction:
        return Direction(self.base_seed, self.step_count if step is None else step, query, param_id)

    # --- the step -------------------------------------------------------------------------------------

    def _displace_all(self, params: list[_Trainable], step: int, query: int, scale: float, decay: float = 1.0) -> None:
        for item in params:
            self.sampler.apply_(item.param, self.direction(query, item.param_id, step), scale, decay)
            self.last_step_random_numbers += self.sampler.numbers_drawn(item.param.numel())

    def _rules(self, params: list[_Trainable]) -> list[UpdateRule]:
        rules = []
        for item in params:
            rule = UpdateRule()
            group = self.param_groups[item.group_index]
            for transform in self.transforms:
                rule = transform.rule(group, item.param, rule)
            rules.append(rule)
        return rules

    def _update(
        self,
        params: list[_Trainable],
        step: int,
        coefficients: Sequence[float],
        pending: tuple[int, float] | None,
    ) -> None:
        """theta <- decay (theta + pending) + scale sum_q c_q z_q, one pass per query with work to do."""
        for item, rule in zip(params, self._rules(params), strict=True):
            decay_left = rule.decay
            for query, coefficient in enumerate(coefficients):
                alpha = rule.scale * coefficient
                if pending is not None and pending[0] == query:
                    alpha += rule.decay * pending[1]
                if alpha == 0.0 and decay_left == 1.0:
                    continue  # nothing to add for this direction (e.g. lr = 0 and no displacement)
                direction = self.direction(query, item.param_id, step)
                self.sampler.apply_(item.param, direction, alpha, decay_left)
                self.last_step_random_numbers += self.sampler.numbers_drawn(item.param.numel())
                decay_left = 1.0
            if decay_left != 1.0:  # every coefficient was zero: decay still applies
                item.param.detach().mul_(decay_left)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """One ZO step. ``closure()`` must return the scalar loss at the current parameters, computed
        without autograd (it is called under ``torch.no_grad()``), on the same batch every call of a step.

        Returns the step's loss (mean of the probe losses) as a 0-d float32 tensor; NaN if a probe loss was
        not finite, in which case the parameters are restored, no update is made and
        ``nonfinite_steps`` is incremented.
        """
        if closure is None:
            raise ValueError(
                "ZOOptimizer.step requires a closure that returns the loss (forward passes only), "
                "e.g. opt.step(lambda: loss_fn(model(x), y))"
            )
        params = self.trainable()
        if not params:
            raise ValueError("no parameter has requires_grad=True: there is nothing to train")
        step = self.step_count
        self.last_step_random_numbers = 0
        estimate = self.estimator.estimate(_Prober(self, params, closure, step))
        self._update(params, step, estimate.coefficients, estimate.pending)
        self._finish_step(estimate)
        for transform in self.transforms:
            transform.after_step(self, closure)
        return torch.tensor(estimate.loss, dtype=torch.float32)

    def _finish_step(self, estimate: Estimate) -> None:
        record = StepRecord(
            step=self.step_count,
            seed=self.base_seed,
            coefficients=estimate.coefficients,
            lrs=tuple(float(g["lr"]) for g in self.param_groups),
            weight_decays=tuple(float(g["weight_decay"]) for g in self.param_groups),
        )
        self.last_record = record
        if self.trajectory is not None:
            self.trajectory.append(record)
        if not estimate.finite:
            self.nonfinite_steps += 1
        self.random_numbers_drawn += self.last_step_random_numbers
        self.step_count += 1

    @torch.no_grad()
    def apply_record(self, record: StepRecord) -> None:
        """Apply a recorded update (replay): theta <- decay theta - lr sum_q c_q z_q, with the record's
        learning rates and weight decays. Only update rules are replayed, not ``after_step`` effects."""
        if record.seed != self.base_seed:
            raise ValueError(f"record was made with seed {record.seed}, this optimizer has {self.base_seed}")
        if len(record.lrs) != len(self.param_groups):
            raise ValueError("record and optimizer have different numbers of param groups")
        saved = [(g["lr"], g["weight_decay"]) for g in self.param_groups]
        try:
            for group, lr, wd in zip(self.param_groups, record.lrs, record.weight_decays, strict=True):
                group["lr"], group["weight_decay"] = lr, wd
            self._update(self.trainable(), record.step, record.coefficients, None)
        finally:
            for group, (lr, wd) in zip(self.param_groups, saved, strict=True):
                group["lr"], group["weight_decay"] = lr, wd

    # --- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict()
        state["zo"] = {
            "step": self.step_count,
            "base_seed": self.base_seed,
            "forward_passes": self.forward_passes,
            "nonfinite_steps": self.nonfinite_steps,
            "random_numbers_drawn": self.random_numbers_drawn,
            "estimator": self.estimator.state_dict(),
            "sampler": self.sampler.state_dict(),
            "transforms": [t.state_dict() for t in self.transforms],
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("not a ZOOptimizer state dict: the 'zo' entry is missing")
        if len(zo["transforms"]) != len(self.transforms):
            raise ValueError(
                f"state dict has {len(zo['transforms'])} transform states, this optimizer has {len(self.transforms)}"
            )
        super().load_state_dict(state_dict)
        self.step_count = int(zo["step"])
        self.base_seed = int(zo["base_seed"])
        self.forward_passes = int(zo["forward_passes"])
        self.nonfinite_steps = int(zo["nonfinite_steps"])
        self.random_numbers_drawn = int(zo["random_numbers_drawn"])
        self.estimator.load_state_dict(zo["estimator"])
        self.sampler.load_state_dict(zo["sampler"])
        for transform, transform_state in zip(self.transforms, zo["transforms"], strict=True):
            transform.load_state_dict(transform_state)

    def __repr__(self) -> str:
        return (
            f"ZOOptimizer(estimator={self.estimator!r}, sampler={self.sampler!r}, "
            f"transforms={self.transforms!r}, seed={self.base_seed}, step={self.step_count})"
        )


class _Prober:
    """The estimator's handle on the parameters and the closure during one step."""

    def __init__(self, optimizer: ZOOptimizer, params: list[_Trainable], closure: Closure, step: int) -> None:
        self.optimizer = optimizer
        self.params = params
        self.closure = closure
        self.step = step
        self.base_seed = optimizer.base_seed

    def displace(self, query: int, scale: float) -> None:
        self.optimizer._displace_all(self.params, self.step, query, scale)

    def loss(self) -> float:
        self.optimizer.forward_passes += 1
        return scalar_loss(self.closure())


def scalar_loss(value: Any) -> float:
    """A closure's return value as a Python float, via float32 (whatever dtype the loss was computed in)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"the closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().to(torch.float32))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the closure must return a scalar loss, got {type(value).__name__}") from None
